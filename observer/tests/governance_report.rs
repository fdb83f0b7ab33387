//! `observer report` on fixed manifests, two nodes' flow logs and a findings
//! log: the JSON is compared whole with a golden file (set
//! `UPDATE_GOLDEN=1` to rewrite it after a deliberate change), and the
//! Markdown and HTML renderings carry its facts.

use std::path::PathBuf;

use observer::governance::report::{ReportConfig, ReportFormat, html, markdown, report};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/governance_fixtures").join(name)
}

fn args() -> ReportConfig {
    ReportConfig {
        manifests: vec![fixture("cluster.yaml")],
        kubeconfig: None,
        flows: vec![fixture("node-a.jsonl"), fixture("node-b.jsonl")],
        findings: vec![fixture("findings.jsonl")],
        format: ReportFormat::Json,
        output: None,
        config: None,
    }
}

#[test]
fn report_json_matches_the_golden_file() {
    let made = report(&args()).expect("report");
    let json = serde_json::to_string_pretty(&made).expect("json") + "\n";
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/report.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &json).expect("write golden");
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file");
    assert_eq!(json, expected, "report JSON differs from tests/golden/report.json");
}

#[test]
fn markdown_and_html_render_the_same_facts() {
    let made = report(&args()).expect("report");
    let md = markdown(&made);
    assert!(md.contains("### ai/model-ingress\n"), "{md}");
    assert!(md.contains("- Owner: ml-platform (annotation)"), "{md}");
    assert!(md.contains("- Owner: data (label:team)"), "{md}");
    assert!(md.contains("| ingress[1] | `[{\"podSelector\":{\"matchLabels\":{\"app\":\"db\"}}}]` | `[{\"port\":9000}]` | **unused** |"), "{md}");
    assert!(md.contains("- **Cannot vouch for everything:**"), "{md}");
    let page = html(&made);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(!page.contains("<script") && !page.contains("href=") && !page.contains("src="), "self-contained");
    assert!(page.contains("<h3>ai/model-ingress</h3>"));
    assert!(page.contains("<td>unused</td>") || page.contains("<td>**unused**</td>"), "{page}");
}
