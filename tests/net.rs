//! Network faults: an HTTP proxy that injects S3 errors or refusals, a TCP forwarder that can
//! be cut, and small HTTP/port helpers.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failed set-up is a failed test

/// What a [`FaultProxy`] refuses outright.
pub enum Refuse {
    Nothing,
    /// Every annotation API call: 501 NotImplemented.
    AnnotationApi,
    /// Annotation calls whose path contains this: 403 AccessDenied.
    Path(String),
    /// Any call whose path contains this: 403 AccessDenied (a bucket these credentials cannot
    /// reach).
    AnyPath(String),
    /// Any call whose `x-amz-expected-bucket-owner` names another account than this one: 403
    /// AccessDenied, as S3 answers when the bucket belongs to someone else.
    OwnerOtherThan(String),
}

/// An HTTP/1.1 proxy in front of the emulator that answers a share of the requests itself with
/// S3 throttling and 5xx errors (one request per connection, `Connection: close`).
pub struct FaultProxy {
    pub port: u16,
    /// Answer every annotation API call with 501 NotImplemented (a store without the API).
    pub injected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub forwarded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream_port: u16, fault_percent: u32) -> FaultProxy {
        FaultProxy::start_mode(upstream_port, fault_percent, Refuse::Nothing).await
    }

    /// A proxy that answers AccessDenied to every annotation call on a key whose request path
    /// contains `path_part` (a bucket policy denying one object).
    pub async fn denying(upstream_port: u16, path_part: &str) -> FaultProxy {
        FaultProxy::start_mode(upstream_port, 0, Refuse::Path(path_part.to_string())).await
    }

    /// A proxy that answers AccessDenied to every call whose request path contains `path_part`.
    pub async fn refusing(upstream_port: u16, path_part: &str) -> FaultProxy {
        FaultProxy::start_mode(upstream_port, 0, Refuse::AnyPath(path_part.to_string())).await
    }

    /// A proxy whose buckets all belong to `account`: a call expecting another owner is refused.
    pub async fn owned_by(upstream_port: u16, account: &str) -> FaultProxy {
        FaultProxy::start_mode(
            upstream_port,
            0,
            Refuse::OwnerOtherThan(account.to_string()),
        )
        .await
    }

    /// A proxy whose S3 has no annotation API: every `?annotation` request gets 501
    /// NotImplemented, as from IBM COS or another S3-compatible store.
    pub async fn without_annotation_api(upstream_port: u16) -> FaultProxy {
        FaultProxy::start_mode(upstream_port, 0, Refuse::AnnotationApi).await
    }

    async fn start_mode(upstream_port: u16, fault_percent: u32, refuse: Refuse) -> FaultProxy {
        let refuse = std::sync::Arc::new(refuse);
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let injected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (inj, fwd) = (injected.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(99);
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let fault = rng.u32(0..100) < fault_percent;
                let slow_down = rng.bool();
                let (inj, fwd) = (inj.clone(), fwd.clone());
                let refuse = refuse.clone();
                tokio::spawn(async move {
                    if fault {
                        inj.fetch_add(1, Ordering::Relaxed);
                    } else {
                        fwd.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = proxy_one(conn, upstream_port, fault, slow_down, &refuse).await;
                });
            }
        });
        FaultProxy {
            port,
            injected,
            forwarded,
            task,
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_one(
    mut conn: tokio::net::TcpStream,
    upstream_port: u16,
    fault: bool,
    slow_down: bool,
    refuse: &Refuse,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (head, body) = read_message(&mut conn).await?;
    if !head.ends_with("\r\n\r\n") {
        return Ok(()); // closed before a whole request
    }
    let request_line = head.lines().next().unwrap_or("");
    let annotation_call =
        request_line.contains("?annotation") || request_line.contains("&annotation");
    let refusal = match refuse {
        Refuse::AnnotationApi if annotation_call => Some((
            "501 Not Implemented",
            "NotImplemented",
            "A header you provided implies functionality that is not implemented.",
        )),
        Refuse::Path(part) if annotation_call && request_line.contains(part.as_str()) => {
            Some(("403 Forbidden", "AccessDenied", "Access Denied"))
        }
        Refuse::AnyPath(part) if request_line.contains(part.as_str()) => {
            Some(("403 Forbidden", "AccessDenied", "Access Denied"))
        }
        Refuse::OwnerOtherThan(owner)
            if head.lines().any(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-amz-expected-bucket-owner:")
                    .is_some_and(|v| v.trim() != owner)
            }) =>
        {
            Some(("403 Forbidden", "AccessDenied", "Access Denied"))
        }
        _ => None,
    };
    if let Some((status, code, message)) = refusal {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        );
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(response.as_bytes()).await?;
        return conn.shutdown().await;
    }
    if fault {
        let (status, code) = if slow_down {
            ("503 Slow Down", "SlowDown")
        } else {
            ("500 Internal Server Error", "InternalError")
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
        );
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(response.as_bytes()).await?;
        return conn.shutdown().await;
    }
    let response = forward_raw(upstream_port, &head, &body).await?;
    conn.write_all(&response).await?;
    conn.shutdown().await
}

/// A TCP forwarder to a local service that can be switched off: then every open connection is
/// cut and new ones are closed at once (a database outage, as the client sees it). It can also
/// stall: connections stay open, new ones are accepted, and nothing is forwarded either way
/// (a hung peer, which no error reports).
pub struct TcpSwitch {
    pub port: u16,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalled: tokio::sync::watch::Sender<bool>,
    connections: std::sync::Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpSwitch {
    pub async fn start(upstream_port: u16) -> TcpSwitch {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind switch");
        let port = listener.local_addr().expect("addr").port();
        let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (stalled, watch) = tokio::sync::watch::channel(false);
        let connections = std::sync::Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let (on2, conns2) = (on.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !on2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut stall = watch.clone();
                conns2.lock().expect("lock").spawn(async move {
                    let Ok(mut upstream) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    loop {
                        // Hold both ends, forwarding nothing, while stalled.
                        if stall.wait_for(|s| !*s).await.is_err() {
                            return;
                        }
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream) => return,
                            _ = stall.wait_for(|s| *s) => {}
                        }
                    }
                });
            }
        });
        TcpSwitch {
            port,
            on,
            stalled,
            connections,
            accept,
        }
    }

    /// Cuts every connection and refuses new ones, or forwards again.
    pub fn set(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::SeqCst);
        if !on {
            self.connections.lock().expect("lock").abort_all();
        }
    }

    /// Stops forwarding while keeping every connection open, or forwards again.
    pub fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }
}

impl Drop for TcpSwitch {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().expect("lock").abort_all();
    }
}

/// `GET path` on 127.0.0.1:`port`: (status code, body); `None` when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// A port that was free a moment ago, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A proxy in front of the emulator's S3 Tables API that makes `UpdateTableMetadataLocation`
/// a compare-and-swap, as AWS's is: the emulator hands out version tokens but never checks
/// them, so two writers could overwrite each other's commits there and nowhere else. Every
/// version token the proxy returns names the metadata location it was read with; an update
/// whose token no longer names the current location is refused with 409 ConflictException.
/// Updates are checked and forwarded one at a time.
pub struct S3TablesCasProxy {
    pub port: u16,
    /// Updates refused as conflicts.
    pub conflicts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl S3TablesCasProxy {
    pub async fn start(upstream_port: u16) -> S3TablesCasProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let conflicts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let updates = std::sync::Arc::new(tokio::sync::Mutex::new(std::collections::HashSet::<
            String,
        >::new()));
        let counted = conflicts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (updates, counted) = (updates.clone(), counted.clone());
                tokio::spawn(async move {
                    let _ = cas_one(conn, upstream_port, &updates, &counted).await;
                });
            }
        });
        S3TablesCasProxy {
            port,
            conflicts,
            task,
        }
    }
}

impl Drop for S3TablesCasProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The version token of a metadata location; a table just created (whose response names no
/// location) gets [`CREATED`].
fn cas_token(location: Option<&str>) -> String {
    use sha2::Digest;
    let Some(location) = location else {
        return CREATED.to_string();
    };
    let digest = sha2::Sha256::digest(location.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The token of a table no update has been accepted for yet.
const CREATED: &str = "created";

async fn cas_one(
    mut conn: tokio::net::TcpStream,
    upstream_port: u16,
    updates: &tokio::sync::Mutex<std::collections::HashSet<String>>,
    conflicts: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (head, body) = read_message(&mut conn).await?;
    let request_line = head.lines().next().unwrap_or("").to_string();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let is_update = method == "PUT" && path.ends_with("/metadata-location");
    // Updates are checked and forwarded one at a time; the set holds the tables that have
    // taken an update (until then, the token a creation handed out is current too).
    let mut serial = if is_update {
        Some(updates.lock().await)
    } else {
        None
    };
    if let Some(updated) = serial.as_mut() {
        // The location now, read with the update's own headers (they route it to S3 Tables).
        let get_head = head.replacen("PUT ", "GET ", 1);
        let get_head: String = get_head
            .split("\r\n")
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                !l.starts_with("content-length:") && !l.starts_with("content-type:")
            })
            .filter(|l| !l.is_empty())
            .map(|l| format!("{l}\r\n"))
            .collect();
        let (_, current) = forward(upstream_port, &get_head, &[]).await?;
        let current: serde_json::Value = serde_json::from_slice(&current).unwrap_or_default();
        let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let now = cas_token(current["metadataLocation"].as_str());
        let asked = asked["versionToken"].as_str().unwrap_or("");
        let current = asked == now || (asked == CREATED && !updated.contains(path));
        if current {
            updated.insert(path.to_string());
        } else {
            conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let body =
                r#"{"message":"The version token does not match the table's current version."}"#;
            let response = format!(
                "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nx-amzn-errortype: ConflictException\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(response.as_bytes()).await?;
            return conn.shutdown().await;
        }
    }
    let (status_and_headers, response_body) = forward(upstream_port, &head, &body).await?;
    let mut json: serde_json::Value =
        serde_json::from_slice(&response_body).unwrap_or(serde_json::Value::Null);
    let response_body = if json.get("versionToken").is_some() {
        let token = cas_token(json["metadataLocation"].as_str());
        json["versionToken"] = serde_json::Value::String(token);
        json.to_string().into_bytes()
    } else {
        response_body
    };
    let head: String = status_and_headers
        .split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.is_empty()
                && !l.starts_with("content-length:")
                && !l.starts_with("transfer-encoding:")
                && !l.starts_with("connection:")
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    conn.write_all(
        format!(
            "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
            response_body.len()
        )
        .as_bytes(),
    )
    .await?;
    conn.write_all(&response_body).await?;
    conn.shutdown().await
}

/// One HTTP/1.1 message from `conn`: its head (up to the blank line) and its body
/// (Content-Length or chunked).
async fn read_message<R: tokio::io::AsyncRead + Unpin>(
    conn: &mut R,
) -> std::io::Result<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok((String::from_utf8_lossy(&buf).into_owned(), Vec::new()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let lower = l.to_ascii_lowercase();
            lower.strip_prefix(name).map(|v| v.trim().to_string())
        })
    };
    let mut body = buf[head_end..].to_vec();
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            if let Some(decoded) = dechunk(&body) {
                return Ok((head, decoded));
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok((head, dechunk(&body).unwrap_or_default()));
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let length: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

/// The body of a complete chunked encoding, or `None` while more is to come.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if raw.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Sends one request upstream (its head rewritten to close the connection); the whole answer.
async fn forward_raw(upstream_port: u16, head: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut rewritten: String = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect();
    rewritten.push_str("Connection: close\r\n\r\n");
    let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    upstream.write_all(rewritten.as_bytes()).await?;
    upstream.write_all(body).await?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response).await?;
    Ok(response)
}

/// [`forward_raw`], the answer split: (status line and headers, body).
async fn forward(
    upstream_port: u16,
    head: &str,
    body: &[u8],
) -> std::io::Result<(String, Vec<u8>)> {
    let response = forward_raw(upstream_port, head, body).await?;
    read_message(&mut response.as_slice()).await
}
