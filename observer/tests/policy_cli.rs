//! `observer policy check` run as a user would: the built binary on manifest
//! files in a temporary folder.

use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use serde_json::{Value, json};

const NAMESPACES: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: shop
---
apiVersion: v1
kind: Namespace
metadata:
  name: data
";

const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: shop, labels: {app: web}}
  spec:
    containers:
    - name: c
      ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]
  status: {podIP: 198.18.0.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: shop, labels: {app: client}}
  spec: {containers: [{name: c}]}
  status: {podIP: 198.18.0.11}
- apiVersion: v1
  kind: Pod
  metadata: {name: db, namespace: data, labels: {app: db}}
  spec: {containers: [{name: c}]}
  status: {podIP: 198.18.1.10}
"#;

/// Policies; the broken document starts on line 21 (its error is on line 22), the invalid policy on line 23.
const POLICIES: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-ingress
  namespace: shop
  resourceVersion: \"42\"
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: client
    ports:
    - port: http
    - port: dns
      protocol: UDP
---
metadata: [unclosed
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: broken
  namespace: shop
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock:
        cidr: 10.0.0.0/8
        except: [11.0.0.0/16]
";

fn fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in [("namespaces.yaml", NAMESPACES), ("pods.yaml", PODS), ("policies.yaml", POLICIES)] {
        std::fs::write(dir.path().join(name), text).expect("write fixture");
    }
    dir
}

fn observer(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(["policy", "check", "--manifests"])
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("observer runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or_default().as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("observer finishes")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("UTF-8 stderr")
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output).lines().map(|line| serde_json::from_str(line).expect("JSON line")).collect()
}

#[test]
fn single_flow_is_explained_in_text() {
    let dir = fixtures();
    let allowed = observer(dir.path(), &["--from", "shop/client", "--to", "shop/web", "--port", "8080"], None);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert_eq!(
        stdout(&allowed),
        "shop/client -> shop/web 8080/TCP: ALLOWED\n\
         \x20 egress of shop/client: not isolated for egress, allowed\n\
         \x20 ingress of shop/web: isolated for ingress, allowed by shop/web-ingress\n"
    );
    let denied = observer(dir.path(), &["--from", "data/db", "--to", "198.18.0.10", "--port", "53/udp"], None);
    assert!(denied.status.success(), "{}", stderr(&denied));
    assert_eq!(
        stdout(&denied),
        "data/db -> shop/web 53/UDP: DENIED\n\
         \x20 egress of data/db: not isolated for egress, allowed\n\
         \x20 ingress of shop/web: isolated for ingress, no policy allows it\n"
    );
    let outside = observer(dir.path(), &["--from", "shop/web", "--to", "203.0.113.9", "--port", "443"], None);
    assert!(stdout(&outside).contains("ingress of 203.0.113.9: outside the pod network, no policy applies"));
}

#[test]
fn single_flow_in_json() {
    let dir = fixtures();
    let output = observer(
        dir.path(),
        &["--from", "shop/client", "--to", "shop/web", "--port", "53/UDP", "--output", "json"],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_lines(&output),
        [json!({
            "allowed": true,
            "egress": {"isolated": false, "allowed": true, "policies": []},
            "ingress": {"isolated": true, "allowed": true, "policies": ["shop/web-ingress"]}
        })]
    );
}

#[test]
fn broken_manifests_are_reported_with_file_and_line_and_the_rest_used() {
    let dir = fixtures();
    let output = observer(dir.path(), &["--from", "shop/db", "--to", "shop/web", "--port", "80"], None);
    let errors = stderr(&output);
    let file = dir.path().join("policies.yaml");
    assert!(errors.contains(&format!("{}:22: invalid YAML", file.display())), "{errors}");
    assert!(
        errors.contains(&format!(
            "{}:23: NetworkPolicy shop/broken: spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 must be a strict subset of cidr 10.0.0.0/8",
            file.display()
        )),
        "{errors}"
    );
    assert!(!output.status.success(), "shop/db is no pod");
    assert!(errors.contains("--from: unknown pod shop/db"), "{errors}");
    let judged = observer(dir.path(), &["--from", "data/db", "--to", "shop/client", "--port", "80"], None);
    assert!(judged.status.success(), "the broken policy would have isolated client: {}", stdout(&judged));
    assert!(stdout(&judged).contains("ALLOWED"));
}

#[test]
fn flows_from_a_file_give_one_line_each_and_fail_on_bad_lines() {
    let dir = fixtures();
    let flows = [
        r#"{"src": "shop/client", "dst": "shop/web", "port": 8080, "protocol": "TCP"}"#,
        r#"{"src": "shop/client", "dst": "shop/web", "port": 9090}"#,
        "not json",
        r#"{"src": {"ip": "203.0.113.9"}, "dst": {"ip": "198.18.0.10"}, "port": 53, "protocol": "UDP"}"#,
        "",
        r#"{"src": "shop/nobody", "dst": "shop/web", "port": 80}"#,
        r#"{"src": "shop/client", "dst": {"ip": "198.18.1.10"}, "port": 70000}"#,
        r#"{"src": "shop/client", "dst": {"ip": "198.18.1.10"}, "port": 5432, "protocol": "ICMP"}"#,
        r#"{"src": "shop/client", "dst": {"ip": "198.18.1.10"}, "port": 5432}"#,
    ];
    let path = dir.path().join("flows.jsonl");
    std::fs::write(&path, flows.join("\n")).expect("write flows");
    let output = observer(dir.path(), &["--flows", path.to_str().expect("UTF-8 path")], None);
    assert!(!output.status.success(), "bad lines make the exit status non-zero");
    assert!(stderr(&output).contains("4 of 8 flows could not be judged"), "{}", stderr(&output));
    let open = json!({"isolated": false, "allowed": true, "policies": []});
    assert_eq!(
        json_lines(&output),
        [
            json!({"allowed": true, "egress": open, "ingress": {"isolated": true, "allowed": true, "policies": ["shop/web-ingress"]}}),
            json!({"allowed": false, "egress": open, "ingress": {"isolated": true, "allowed": false, "policies": []}}),
            json!({"error": "line 3: invalid JSON: expected ident at line 1 column 2"}),
            json!({"allowed": false, "egress": open, "ingress": {"isolated": true, "allowed": false, "policies": []}}),
            json!({"error": "line 6: src: unknown pod shop/nobody"}),
            json!({"error": "line 7: port: expected a number from 1 to 65535, got 70000"}),
            json!({"error": "line 8: protocol: expected TCP, UDP or SCTP, got \"ICMP\""}),
            json!({"allowed": true, "egress": open, "ingress": open}),
        ]
    );
}

#[test]
fn flows_from_stdin_exit_zero_when_every_line_is_judged() {
    let dir = fixtures();
    let input = "{\"src\": \"shop/web\", \"dst\": \"shop/client\", \"port\": 1}\n{\"src\": \"data/db\", \"dst\": \"shop/web\", \"port\": 8080}\n";
    let output = observer(dir.path(), &["--flows", "-"], Some(input));
    assert!(output.status.success(), "{}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["allowed"], json!(true));
    assert_eq!(lines[1]["allowed"], json!(false));
    assert_eq!(lines[1]["ingress"]["isolated"], json!(true));
}

#[test]
fn mode_is_required_and_exclusive() {
    let dir = fixtures();
    assert!(!observer(dir.path(), &[], None).status.success());
    assert!(!observer(dir.path(), &["--from", "shop/web", "--to", "shop/client"], None).status.success());
    assert!(!observer(dir.path(), &["--flows", "-", "--from", "shop/web"], None).status.success());
    let bad_end = observer(dir.path(), &["--from", "web", "--to", "shop/client", "--port", "80"], None);
    assert!(!bad_end.status.success());
    assert!(stderr(&bad_end).contains("--from: expected \"namespace/pod\""), "{}", stderr(&bad_end));
}

/// A line that is not UTF-8 and a line past the length cap are each one
/// error line; the lines around them are judged.
#[test]
fn flows_with_invalid_utf8_or_overlong_lines_fail_only_those_lines() {
    let dir = fixtures();
    let good = r#"{"src": "shop/client", "dst": "shop/web", "port": 8080}"#;
    let mut input = Vec::new();
    input.extend_from_slice(good.as_bytes());
    input.extend_from_slice(b"\n{\"src\": \"shop/cli\xffent\", \"dst\": \"shop/web\", \"port\": 8080}\n");
    input.extend_from_slice(&vec![b' '; 200_000]);
    input.extend_from_slice(b"\n");
    input.extend_from_slice(good.as_bytes());
    input.extend_from_slice(b"\n");
    let path = dir.path().join("flows.jsonl");
    std::fs::write(&path, &input).expect("write flows");
    let output = observer(dir.path(), &["--flows", path.to_str().expect("UTF-8 path")], None);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("2 of 4 flows could not be judged"), "{}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["allowed"], json!(true));
    assert_eq!(lines[1], json!({"error": "line 2: not UTF-8 text (invalid byte at offset 17)"}));
    assert_eq!(lines[2], json!({"error": "line 3: longer than 65536 bytes, skipped"}));
    assert_eq!(lines[3]["allowed"], json!(true));
}

/// 256 MiB with no newline at all: one error line, and the process never
/// holds the line (its peak resident memory, from the kernel, stays small).
#[test]
fn an_endless_line_on_stdin_is_skipped_without_being_held() {
    use std::io::Read as _;
    let dir = fixtures();
    let mut child = Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(["policy", "check", "--manifests"])
        .arg(dir.path())
        .args(["--flows", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("observer runs");
    let mut input = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..256 {
            input.write_all(&chunk).expect("write stdin");
        }
        input
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).expect("read stdout");
        text
    });
    // All but a pipe's worth has been read; the line is still open.
    let input = writer.join().expect("writer");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    drop(input);
    let text = reader.join().expect("reader");
    let exit = child.wait().expect("wait");
    assert_eq!(text, "{\"error\":\"line 1: longer than 65536 bytes, skipped\"}\n");
    assert_eq!(exit.code(), Some(1));
    // Well under the 256 MiB the line would take.
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
}

/// A folder with a link loop, a self-link, a FIFO and a link to /dev/zero
/// named like manifests: the check answers, from each file read once.
#[test]
fn a_hostile_manifest_folder_is_walked_without_hanging() {
    use std::os::unix::fs::symlink;
    let dir = fixtures();
    symlink(dir.path(), dir.path().join("loop")).expect("loop");
    symlink(".", dir.path().join("self")).expect("self");
    symlink("/dev/zero", dir.path().join("zero.yaml")).expect("zero");
    let fifo = dir.path().join("pipe.yaml");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(["policy", "check", "--output", "json", "--from", "shop/client", "--to", "shop/web", "--port", "8080"])
        .arg("--manifests")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("observer runs");
    // Not a speed test: a guard so that a hang fails instead of blocking the suite.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("policy check hung on the hostile folder");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    let errors = stderr(&output);
    assert!(output.status.success(), "{errors}");
    assert_eq!(json_lines(&output)[0]["allowed"], json!(true));
    assert!(errors.contains("pipe.yaml:0: skipped: not a regular file"), "{errors}");
    assert!(errors.contains("zero.yaml:0: skipped: not a regular file"), "{errors}");
    // policies.yaml once: its one broken document and one invalid policy, each reported once.
    assert_eq!(errors.matches("policies.yaml:22").count(), 1, "{errors}");
}

#[test]
fn a_missing_manifest_path_stops_the_check() {
    let dir = fixtures();
    let output = Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(["policy", "check", "--from", "shop/client", "--to", "shop/web", "--port", "8080", "--manifests"])
        .arg(dir.path())
        .arg(dir.path().join("typo"))
        .output()
        .expect("observer runs");
    assert!(!output.status.success(), "judged without part of the policy set");
    let errors = stderr(&output);
    assert!(errors.contains("typo:0: no such file or folder"), "{errors}");
    assert!(errors.contains("not judging with part of the policy set"), "{errors}");
    assert!(output.stdout.is_empty());
}

/// ClusterNetworkPolicies beside the NetworkPolicies of [`POLICIES`].
const CLUSTER_POLICIES: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pass-shop, resourceVersion: "3"}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: shop}}}
  ingress:
  - {name: to-owners, action: Pass, from: [{namespaces: {matchLabels: {team: shop}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: egress-guard, resourceVersion: "4"}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {team: shop}}}
  egress:
  - {action: Accept, to: [{domainNames: [api.example.com]}]}
  - {action: Deny, to: [{networks: [203.0.113.0/24]}]}
"#;

#[test]
fn cluster_network_policies_show_the_whole_chain_and_undecidable_is_its_own_outcome() {
    let dir = fixtures();
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER_POLICIES).expect("write fixture");
    let allowed = observer(dir.path(), &["--from", "shop/client", "--to", "shop/web", "--port", "8080"], None);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert_eq!(
        stdout(&allowed),
        "shop/client -> shop/web 8080/TCP: ALLOWED\n\
         \x20 egress of shop/client: no policy decides: allowed by default\n\
         \x20 ingress of shop/web: passed by cnp/pass-shop@3 rule 0 (\"to-owners\") (Admin, priority 10): Pass, then allowed by networkpolicy shop/web-ingress\n"
    );
    // No DNS name is known for an address typed in: the domainNames Accept can neither be
    // matched nor ruled out, and the Deny after it would decide.
    let args = ["--from", "shop/client", "--to", "203.0.113.9", "--port", "443"];
    let unsure = observer(dir.path(), &args, None);
    assert!(unsure.status.success(), "{}", stderr(&unsure));
    assert_eq!(
        stdout(&unsure),
        "shop/client -> 203.0.113.9 443/TCP: UNDECIDABLE\n\
         \x20 egress of shop/client: cnp/egress-guard@4 rule 1 (Admin, priority 5): Deny; undecidable: cnp/egress-guard@4 rule 0 (Admin, priority 5) accepts by domainNames, and the flow's destination has no DNS name the observer saw resolved\n\
         \x20 ingress of 203.0.113.9: outside the pod network, no policy applies\n"
    );
    let json = json_lines(&observer(dir.path(), &[&args[..], &["--output", "json"]].concat(), None));
    assert_eq!(json.len(), 1);
    assert_eq!((&json[0]["allowed"], &json[0]["undecidable"]), (&Value::Null, &json!(true)), "{}", json[0]);
    assert_eq!(json[0]["egress"]["cluster"], json!(["cnp/egress-guard@4 rule 1 (Admin, priority 5): Deny"]));
}
