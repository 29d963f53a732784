//! Runs `auth-sidecar demo` as a subprocess and drives every curl step it prints with a
//! real HTTP client, asserting the outcome each step announces.

mod common;

use std::time::{Duration, Instant};

use common::{Launch, Sidecar};

/// One printed step: its expectation line and its curl command.
struct Step {
    expect: String,
    url: String,
    headers: Vec<(String, String)>,
}

fn parse_curl(cmd: &str) -> (String, Vec<(String, String)>) {
    let url = cmd
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("curl command has a URL")
        .to_string();
    let headers = cmd
        .split(" -H '")
        .skip(1)
        .map(|h| {
            let h = h.trim_end().trim_end_matches('\'');
            let (k, v) = h.split_once(": ").expect("header has a colon");
            (k.to_string(), v.to_string())
        })
        .collect();
    (url, headers)
}

#[tokio::test]
async fn demo_walkthrough_steps_do_what_they_announce() {
    // The demo prints its walkthrough on stdout (no `listening` line at level warn), so
    // the lines are read as they come.
    let demo = Sidecar::spawn(
        Launch::args(["demo"])
            .env("AUTH_SIDECAR__SERVER__LISTEN", "127.0.0.1:0")
            .env("AUTH_SIDECAR__ADMIN__LISTEN", "127.0.0.1:0")
            .env("AUTH_SIDECAR__LOG__LEVEL", "warn")
            .cwd(env!("CARGO_MANIFEST_DIR")),
    )
    .await;
    let mut steps = Vec::new();
    let mut expect = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = demo
            .next_line(deadline)
            .expect("demo prints its walkthrough in time");
        if line == "# demo ready" {
            break;
        }
        if let Some(e) = line.trim_start_matches('#').trim().strip_prefix("expect: ") {
            expect = e.to_string();
        } else if line.starts_with("curl ") {
            let (url, headers) = parse_curl(&line);
            steps.push(Step {
                expect: std::mem::take(&mut expect),
                url,
                headers,
            });
        }
    }
    assert_eq!(steps.len(), 6, "the demo walks through six steps");

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (i, step) in steps.iter().enumerate() {
        let mut req = client.get(&step.url);
        for (k, v) in &step.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("request goes through");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        let want: u16 = step
            .expect
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.trim_end_matches(';').parse().ok())
            .expect("expectation names a status");
        assert_eq!(
            status,
            want,
            "step {}: {} (body {body})",
            i + 1,
            step.expect
        );
        if let Some(seen) = step.expect.split("the backend sees ").nth(1) {
            let (h, v) = seen.split_once(": ").unwrap();
            let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(echo["headers"][h], v, "step {}: backend saw {body}", i + 1);
        }
        if let Some(has) = step.expect.split("response has ").nth(1) {
            match has.split_once(": ") {
                Some((h, v)) => assert_eq!(headers[h], v, "step {}", i + 1),
                None => assert!(headers.contains_key(has), "step {}: {has} missing", i + 1),
            }
        }
    }
}
