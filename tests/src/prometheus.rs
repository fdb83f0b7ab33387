//! A real Prometheus server for tests: Debian's `prometheus` binary on
//! 127.0.0.1 with a config, rule files and a data folder of its own, killed
//! and removed on drop.
//!
//! In: scrape targets and rule files. Out: a guard with instant queries,
//! alerts and rule health through Prometheus' HTTP API, plus a minimal HTTP
//! GET for any loopback endpoint.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Why Prometheus could not be run or asked.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// A file or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// It did not become ready.
    #[error("prometheus did not become ready within {waited:?}; its log ends with:\n{log_tail}")]
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// The end of its log.
        log_tail: String,
    },
    /// The API answered something unexpected.
    #[error("prometheus API {path}: {message}")]
    Api {
        /// The request.
        path: String,
        /// What was wrong.
        message: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PrometheusError {
    let what = what.into();
    move |source| PrometheusError::Io { what, source }
}

/// A scrape target.
#[derive(Clone, Debug)]
pub struct ScrapeTarget {
    /// Job name.
    pub job: String,
    /// `host:port`.
    pub addr: SocketAddr,
    /// Extra target labels (the ServiceMonitor adds `node`).
    pub labels: Vec<(String, String)>,
}

/// A running Prometheus server.
#[derive(Debug)]
pub struct PrometheusServer {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> Result<u16, PrometheusError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(listener.local_addr().map_err(io("reading the free port"))?.port())
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` every `interval` and evaluating
    /// the rule files (name, content) as often; waits until it is ready.
    pub fn start(
        targets: &[ScrapeTarget],
        rule_files: &[(&str, String)],
        interval: Duration,
    ) -> Result<Self, PrometheusError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("observer-prometheus-{}-{serial}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).map_err(io(format!("creating {}", dir.display())))?;
        let interval_text = format!("{}ms", interval.as_millis());
        let mut config = format!(
            "global:\n  scrape_interval: {interval_text}\n  scrape_timeout: {interval_text}\n  evaluation_interval: {interval_text}\nrule_files:\n"
        );
        for (name, content) in rule_files {
            fs::write(dir.join(name), content).map_err(io(format!("writing rule file {name}")))?;
            config.push_str(&format!("  - {name}\n"));
        }
        config.push_str("scrape_configs:\n");
        // One scrape config per job (Prometheus refuses two of one name),
        // one static config per target for its labels.
        let mut jobs: Vec<&str> = targets.iter().map(|target| target.job.as_str()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        for job in jobs {
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n"));
            for target in targets.iter().filter(|target| target.job == job) {
                config.push_str(&format!("      - targets: ['{}']\n", target.addr));
                if target.labels.is_empty() {
                    continue;
                }
                config.push_str("        labels:\n");
                for (key, value) in &target.labels {
                    config.push_str(&format!("          {key}: '{value}'\n"));
                }
            }
        }
        let config_path = dir.join("prometheus.yml");
        fs::write(&config_path, config).map_err(io("writing prometheus.yml"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let log = fs::File::create(dir.join("prometheus.log")).map_err(io("creating prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-lifecycle")
            .arg("--log.level=warn")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io("starting prometheus (Debian package `prometheus`; `cargo xtask setup` installs it)"))?;
        let server = Self { child, dir, addr };
        server.wait_ready(Duration::from_secs(30))?;
        Ok(server)
    }

    /// Where its HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), PrometheusError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if http_get(self.addr, "/-/ready").is_ok_and(|(status, _)| status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        Err(PrometheusError::NotReady { waited: limit, log_tail: lines[lines.len().saturating_sub(15)..].join("\n") })
    }

    fn api(&self, path: &str) -> Result<Value, PrometheusError> {
        let api_error = |message: String| PrometheusError::Api { path: path.to_owned(), message };
        let (status, body) = http_get(self.addr, path)?;
        let value: Value = serde_json::from_str(&body)
            .map_err(|error| api_error(format!("HTTP {status}, not JSON ({error}): {body}")))?;
        if value["status"] != "success" {
            return Err(api_error(format!("HTTP {status}: {body}")));
        }
        Ok(value["data"].clone())
    }

    /// An instant query: the result vector (or scalar as a one-element list).
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, PrometheusError> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        Ok(match data["resultType"].as_str() {
            Some("vector" | "matrix") => data["result"].as_array().cloned().unwrap_or_default(),
            _ => vec![data["result"].clone()],
        })
    }

    /// An instant query evaluated at `time` (Unix seconds).
    pub fn query_at(&self, promql: &str, time: f64) -> Result<Vec<Value>, PrometheusError> {
        let data = self.api(&format!("/api/v1/query?query={}&time={time:.3}", encode(promql)))?;
        Ok(match data["resultType"].as_str() {
            Some("vector" | "matrix") => data["result"].as_array().cloned().unwrap_or_default(),
            _ => vec![data["result"].clone()],
        })
    }

    /// Active alerts (pending and firing).
    pub fn alerts(&self) -> Result<Vec<Value>, PrometheusError> {
        Ok(self.api("/api/v1/alerts")?["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// Every loaded alerting and recording rule, with its health.
    pub fn rules(&self) -> Result<Vec<Value>, PrometheusError> {
        let data = self.api("/api/v1/rules")?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// Health of every scrape target (`up`, `down`, `unknown`).
    pub fn target_health(&self) -> Result<Vec<String>, PrometheusError> {
        let data = self.api("/api/v1/targets")?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|target| target["health"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    /// Waits (at most `limit`) until `check` returns `Some`.
    pub fn wait_for<T>(&self, limit: Duration, mut check: impl FnMut(&Self) -> Option<T>) -> Option<T> {
        let start = Instant::now();
        loop {
            if let Some(found) = check(self) {
                return Some(found);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// `GET path` over HTTP/1.0 (the server closes the connection after the
/// body, so no chunked encoding to undo): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), PrometheusError> {
    let what = format!("GET http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io(what.clone()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io(what.clone()))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n").map_err(io(what.clone()))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io(what.clone()))?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// [`http_get`] from inside the network namespace at `netns` (the lab
/// node's, where kubelet probes come from, or a pod's).
pub fn http_get_in(netns: &std::path::Path, addr: SocketAddr, path: &str) -> Result<(u16, String), PrometheusError> {
    crate::exec::in_netns(netns, || Ok(http_get(addr, path))).map_err(|error| PrometheusError::Io {
        what: format!("GET http://{addr}{path}"),
        source: std::io::Error::other(error.to_string()),
    })?
}
