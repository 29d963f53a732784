//! Ports for the real servers the tests start (nginx, Envoy, Redis): a free one to hand
//! to a process, and whether that very process listens on it. A free port is only free
//! at the moment it is picked: another test's listener may take it before the server
//! binds, so readiness checks ask who listens, not only whether something answers.

/// A 127.0.0.1 port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("the bound address")
        .port()
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port`: the inode of that
/// LISTEN entry in /proc/net/tcp is one of the process's open files.
pub fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Fields: sl, local, remote, state (0A is LISTEN), ..., inode (the 10th).
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    if sockets.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
            .unwrap_or(false)
    })
}
