//! A mock of ConnectyCube's session API (a real HTTP server on 127.0.0.1:0), in the shape
//! its server API documents:
//!
//! - `GET /session` with `CB-Token: <token>`: `200 {"session": {...}}` (the session
//!   object: `id`, `application_id`, `user_id` (0 for an application session), `token`,
//!   `nonce`, `ts`, `created_at`, `updated_at`, and `user` for a user session), or
//!   `401 {"errors": ["Required session does not exist"]}`; every answered request
//!   prolongs the session (sliding expiry, `idle` after its last request).
//! - `POST /session` (JSON): `application_id`, `auth_key`, `nonce`, `timestamp`,
//!   `signature` and `user` (`login`: a Custom Identity Provider token, or `guest` +
//!   `full_name`). The signature is checked as the docs say: HMAC-SHA1 with the auth
//!   secret over `application_id=…&auth_key=…&nonce=…&timestamp=…&user[…]=…` (sorted),
//!   hex; a wrong key or signature is
//!   `422 {"errors": {"base": ["Unexpected signature"]}}`; a reused nonce is refused too.
//!   Success: `201 {"session": {...}}` with a new token.
//!
//! The CIdP login is the app's identity token (HS256 with [`crate::common::APP_SECRET`]):
//! its `externalId` names the user, created on first login.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::mock::{Answer, MockServer, Req};

pub const CC_APP_ID: u64 = 12345;
pub const CC_AUTH_KEY: &str = "cc-auth-key-DFW7h3nq9pLxA2";
pub const CC_AUTH_SECRET: &str = "cc-auth-secret-Zt8Kw5RbY1mQe4Vj";

#[derive(Clone)]
struct Session {
    id: u64,
    user_id: u64,
    last: Instant,
    created: u64,
}

#[derive(Clone)]
pub struct User {
    pub id: u64,
    pub login: String,
    pub email: String,
    pub full_name: String,
    pub is_guest: bool,
}

struct State {
    idle: Duration,
    sessions: HashMap<String, Session>,
    users: HashMap<u64, User>,
    next: u64,
    nonces: HashSet<String>,
    creates: usize,
    refused_creates: usize,
    gets: usize,
    garbage: bool,
    /// Delay before answering POST /session (to let concurrent requests pile up).
    create_delay: Duration,
    last_create: Option<Value>,
}

/// The running mock; stops on Drop.
pub struct ConnectyCube {
    pub server: MockServer,
    st: Arc<Mutex<State>>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn not_found() -> Answer {
    Answer::json(401, &json!({"errors": ["Required session does not exist"]}))
}

fn hmac_sha1_hex(key: &str, text: &str) -> String {
    use aws_lc_rs::hmac;
    let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
    hmac::sign(&k, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The signature string the docs describe, built from the request's fields.
fn signature_string(body: &Value) -> Option<String> {
    let field = |k: &str| -> Option<String> {
        match body.get(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let mut params = vec![
        format!("application_id={}", field("application_id")?),
        format!("auth_key={}", field("auth_key")?),
        format!("nonce={}", field("nonce")?),
        format!("timestamp={}", field("timestamp")?),
    ];
    if let Some(Value::Object(user)) = body.get("user") {
        let mut u: Vec<String> = user
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("user[{k}]={v}")
            })
            .collect();
        u.sort();
        params.extend(u);
    }
    params.sort();
    Some(params.join("&"))
}

impl State {
    fn token(&mut self) -> String {
        use sha2::{Digest, Sha256};
        self.next += 1;
        let d = Sha256::digest(format!("cc-session-{}-{:?}", self.next, Instant::now()));
        d.iter().take(20).map(|b| format!("{b:02x}")).collect()
    }

    fn session_json(&self, token: &str, s: &Session) -> Value {
        let mut v = json!({
            "_id": format!("5c0f9c1b{:016x}", s.id),
            "id": s.id,
            "application_id": CC_APP_ID,
            "user_id": s.user_id,
            "token": token,
            "nonce": 4214611091u64,
            "ts": s.created,
            "created_at": "2018-12-05T11:58:02Z",
            "updated_at": "2018-12-05T11:58:02Z",
        });
        if let Some(u) = self.users.get(&s.user_id) {
            v["user"] = json!({
                "id": u.id,
                "login": u.login,
                "email": u.email,
                "full_name": u.full_name,
                "is_guest": u.is_guest,
                "external_user_id": null,
                "custom_data": "",
            });
        }
        json!({ "session": v })
    }

    fn new_session(&mut self, user_id: u64) -> String {
        let token = self.token();
        self.next += 1;
        let s = Session {
            id: self.next,
            user_id,
            last: Instant::now(),
            created: now(),
        };
        self.sessions.insert(token.clone(), s);
        token
    }

    fn user(&mut self, login: &str, full_name: &str, guest: bool) -> u64 {
        if !guest {
            if let Some(u) = self.users.values().find(|u| u.login == login) {
                return u.id;
            }
        }
        self.next += 1;
        let id = 100 + self.next;
        self.users.insert(
            id,
            User {
                id,
                login: login.into(),
                email: if guest {
                    String::new()
                } else {
                    format!("{login}@example.com")
                },
                full_name: full_name.into(),
                is_guest: guest,
            },
        );
        id
    }

    fn get(&mut self, req: &Req) -> Answer {
        self.gets += 1;
        if self.garbage {
            return Answer {
                status: 200,
                headers: vec![("content-type".into(), "text/html".into())],
                body: b"<html>maintenance</html>".to_vec(),
            };
        }
        let Some(token) = req.header("cb-token").map(str::to_string) else {
            return Answer::json(401, &json!({"errors": ["Token is required"]}));
        };
        let idle = self.idle;
        let Some(s) = self.sessions.get_mut(&token) else {
            return not_found();
        };
        if s.last.elapsed() > idle {
            self.sessions.remove(&token);
            return not_found();
        }
        s.last = Instant::now();
        let s = s.clone();
        Answer::json(200, &self.session_json(&token, &s))
    }

    fn create(&mut self, req: &Req) -> Answer {
        let refused = |st: &mut State| {
            st.refused_creates += 1;
            Answer::json(422, &json!({"errors": {"base": ["Unexpected signature"]}}))
        };
        let Ok(body) = serde_json::from_str::<Value>(&req.body) else {
            return Answer::json(422, &json!({"errors": {"base": ["Invalid params"]}}));
        };
        self.last_create = Some(body.clone());
        let Some(text) = signature_string(&body) else {
            return refused(self);
        };
        let sig = body.get("signature").and_then(Value::as_str).unwrap_or("");
        let app_ok = body.get("application_id").and_then(Value::as_u64) == Some(CC_APP_ID);
        let key_ok = body.get("auth_key").and_then(Value::as_str) == Some(CC_AUTH_KEY);
        if !app_ok || !key_ok || sig != hmac_sha1_hex(CC_AUTH_SECRET, &text) {
            return refused(self);
        }
        let ts = body.get("timestamp").and_then(Value::as_u64).unwrap_or(0);
        if now().abs_diff(ts) > 3600 {
            return refused(self);
        }
        let nonce = format!("{ts}:{}", body["nonce"]);
        if !self.nonces.insert(nonce) {
            return refused(self);
        }
        let user = body.get("user").cloned().unwrap_or(Value::Null);
        let user_id = if user.is_null() {
            0
        } else if user.get("guest").and_then(Value::as_str) == Some("1") {
            let name = user.get("full_name").and_then(Value::as_str).unwrap_or("");
            self.user("", name, true)
        } else {
            // Custom Identity Provider: the login is the app's identity token.
            let login = user.get("login").and_then(Value::as_str).unwrap_or("");
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            let Ok(claims) = jsonwebtoken::decode::<Value>(
                login,
                &jsonwebtoken::DecodingKey::from_secret(super::APP_SECRET.as_bytes()),
                &v,
            ) else {
                return Answer::json(401, &json!({"errors": ["Unauthorized"]}));
            };
            let ext = claims.claims["externalId"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let name = claims.claims["name"].as_str().unwrap_or("").to_string();
            self.user(&ext, &name, false)
        };
        self.creates += 1;
        let token = self.new_session(user_id);
        let s = self.sessions[&token].clone();
        Answer::json(201, &self.session_json(&token, &s))
    }
}

impl ConnectyCube {
    /// Sessions expire `idle` after their last request.
    pub async fn start(idle: Duration) -> ConnectyCube {
        let st = Arc::new(Mutex::new(State {
            idle,
            sessions: HashMap::new(),
            users: HashMap::new(),
            next: 0,
            nonces: HashSet::new(),
            creates: 0,
            refused_creates: 0,
            gets: 0,
            garbage: false,
            create_delay: Duration::ZERO,
            last_create: None,
        }));
        let s = st.clone();
        let server = MockServer::start(Arc::new(move |req: &Req| {
            let delay = s.lock().unwrap().create_delay;
            match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/session") => s.lock().unwrap().get(req),
                ("POST", "/session") => {
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    s.lock().unwrap().create(req)
                }
                _ => Answer::json(404, &json!({"errors": ["Not found"]})),
            }
        }))
        .await;
        ConnectyCube { server, st }
    }

    /// `http://127.0.0.1:PORT/session`.
    pub fn session_url(&self) -> String {
        self.server.url("/session")
    }

    /// A user session for `login` (the user is created on the fly): (token, user id).
    pub fn user_session(&self, login: &str, full_name: &str) -> (String, u64) {
        let mut st = self.st.lock().unwrap();
        let id = st.user(login, full_name, false);
        (st.new_session(id), id)
    }

    /// A guest session: (token, user id).
    pub fn guest_session(&self, full_name: &str) -> (String, u64) {
        let mut st = self.st.lock().unwrap();
        let id = st.user("", full_name, true);
        (st.new_session(id), id)
    }

    /// An application session (no user).
    pub fn app_session(&self) -> String {
        self.st.lock().unwrap().new_session(0)
    }

    /// The session ends now (as if idle for 2 h).
    pub fn expire(&self, token: &str) {
        self.st.lock().unwrap().sessions.remove(token);
    }

    pub fn is_live(&self, token: &str) -> bool {
        let st = self.st.lock().unwrap();
        st.sessions
            .get(token)
            .is_some_and(|s| s.last.elapsed() <= st.idle)
    }

    /// The user a live session belongs to (0: application session).
    pub fn user_of(&self, token: &str) -> Option<u64> {
        self.st
            .lock()
            .unwrap()
            .sessions
            .get(token)
            .map(|s| s.user_id)
    }

    pub fn user(&self, id: u64) -> Option<User> {
        self.st.lock().unwrap().users.get(&id).cloned()
    }

    /// Sessions created by `POST /session` (signature accepted).
    pub fn creates(&self) -> usize {
        self.st.lock().unwrap().creates
    }

    /// `POST /session` calls refused (wrong key or signature, reused nonce).
    pub fn refused_creates(&self) -> usize {
        self.st.lock().unwrap().refused_creates
    }

    /// `GET /session` calls answered.
    pub fn gets(&self) -> usize {
        self.st.lock().unwrap().gets
    }

    pub fn last_create(&self) -> Option<Value> {
        self.st.lock().unwrap().last_create.clone()
    }

    /// `GET /session` answers 200 with an HTML page.
    pub fn set_garbage(&self, on: bool) {
        self.st.lock().unwrap().garbage = on;
    }

    pub fn set_create_delay(&self, d: Duration) {
        self.st.lock().unwrap().create_delay = d;
    }

    pub fn set_down(&self, down: bool) {
        self.server.set_down(down);
    }
}
