//! `cargo xtask lab up|down|status`: a persistent lab for working by hand; the subcommand in, the
//! lab brought up or removed (state in `/run/observer-lab/`) and a summary printed out.

use anyhow::Context;
use clap::Subcommand;
use observer_tests::{
    Lab, LabState, Protocol, Service, all_states, cleanup_stale, cluster_ip_v4, cluster_ip_v6, down_persistent,
    manifests::{self, PodSpec},
    persistent_state,
};

/// What to do with the persistent lab.
#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Bring up a persistent lab (prefix `obslab-`) and print its pods.
    Up {
        /// Number of pods (198.18.0.10, .11, …).
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// IPv4 only.
        #[arg(long)]
        no_ipv6: bool,
        /// No internet namespace.
        #[arg(long)]
        no_internet: bool,
        /// Make the node namespace a node: its primary address, bridge-nf, masquerade, a
        /// host-network pod, and kube-proxy-style Services (`default/web` on the pods after the
        /// first, NodePort 30080; `kube-system/kube-dns` on the last pod), with their manifests.
        #[arg(long)]
        node: bool,
    },
    /// Remove the persistent lab and leftovers of crashed test runs.
    Down,
    /// Show the persistent lab and any other labs on this machine.
    Status,
}

/// Runs a lab subcommand.
pub fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up { pods, no_ipv6, no_internet, node } => {
            if node && pods < 3 {
                anyhow::bail!("--node needs at least 3 pods (a client, a web backend, the DNS server)");
            }
            let lab =
                Lab::builder().pods(pods).ipv6(!no_ipv6).internet(!no_internet).node(node).persistent(true).build()?;
            if node {
                node_services(&lab, !no_ipv6)?;
            }
            let state = LabState::load(&lab.state_path())?;
            let path = lab.keep();
            print_summary(&state);
            println!("state: {}", path.display());
            println!("remove with: cargo xtask lab down");
        }
        LabCmd::Down => {
            let had = down_persistent().context("removing the persistent lab")?;
            let stale = cleanup_stale()?;
            println!("{}", if had { "persistent lab removed" } else { "no persistent lab was up" });
            if !stale.is_empty() {
                println!("removed stale labs: {}", stale.join(", "));
            }
        }
        LabCmd::Status => {
            match persistent_state()? {
                Some(state) => print_summary(&state),
                None => println!("no persistent lab is up (cargo xtask lab up)"),
            }
            for (path, state) in all_states() {
                match state {
                    Ok(s) if s.owner_pid != 0 => {
                        println!("test lab {} (owner pid {}): {} pods", s.prefix, s.owner_pid, s.pods.len());
                    }
                    Ok(_) => {}
                    Err(e) => println!("unreadable state {}: {e}", path.display()),
                }
            }
        }
    }
    Ok(())
}

/// The persistent lab's Services and their manifests (Pods, Services, EndpointSlices, the Node).
fn node_services(lab: &Lab, ipv6: bool) -> anyhow::Result<()> {
    let family = |host: u8| {
        let mut ips = vec![cluster_ip_v4(host).into()];
        if ipv6 {
            ips.push(cluster_ip_v6(host).into());
        }
        ips
    };
    let dns_pod = lab.pod(lab.pods().len() - 1);
    let mut web = Service::new("default", "web", &family(20))
        .selector("app", "web")
        .port("http", Protocol::Tcp, 80, 8080)
        .node_port(30080);
    let mut headless = Service::headless("default", "web-headless").selector("app", "web");
    headless = headless.port("http", Protocol::Tcp, 8080, 8080);
    for pod in &lab.pods()[1..lab.pods().len() - 1] {
        web = web.backend(pod, pod.name());
        headless = headless.backend(pod, pod.name());
    }
    let services = vec![web, headless, Service::kube_dns(dns_pod, "coredns-0", ipv6)];
    let mut items = vec![manifests::namespace("default", &[]), manifests::namespace("kube-system", &[])];
    for (i, pod) in lab.pods().iter().enumerate() {
        let (namespace, name, labels) = if i == lab.pods().len() - 1 {
            ("kube-system", "coredns-0", vec![("k8s-app", "kube-dns")])
        } else if i == 0 {
            ("default", pod.name(), vec![("app", "client")])
        } else {
            ("default", pod.name(), vec![("app", "web")])
        };
        items.push(manifests::pod(&PodSpec { pod, namespace, name, labels, owner: None, ports: vec![] }));
    }
    if let Some(host) = lab.host_pod() {
        let labels = vec![("app", "node-agent")];
        items.push(manifests::pod(&PodSpec {
            pod: host,
            namespace: "kube-system",
            name: "node-agent-0",
            labels,
            owner: None,
            ports: vec![],
        }));
    }
    if let Some(node) = lab.node() {
        items.push(manifests::node(node));
    }
    for service in &services {
        items.extend(manifests::service_objects(service));
    }
    let path = lab.state_path().with_extension("manifests");
    manifests::write_list(&path, items).with_context(|| format!("writing {}", path.display()))?;
    lab.kube_proxy(services)?.keep();
    println!("manifests (Pods, Services, EndpointSlices, the Node): {}", path.display());
    println!(
        "start the DNS server: ip netns exec {} target/debug/lab-traffic dns-server --listen {}:53 --zone 'web.default.svc.cluster.local=198.19.0.20/30'",
        observer_tests::Endpoint::netns(dns_pod),
        dns_pod.ipv4()
    );
    Ok(())
}

fn print_summary(state: &LabState) {
    let root = state.cgroup_root.display();
    println!("lab {} (cgroup root {root}, node netns {}node)", state.prefix, state.prefix);
    println!("{:<6} {:<18} {:<14} {:<26} {:<38} {:<10} cgroup", "pod", "netns", "ipv4", "ipv6", "uid", "cgroup id");
    for p in &state.pods {
        use observer_tests::Endpoint;
        let v6 = p.ipv6().map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<6} {:<18} {:<14} {:<26} {:<38} {:<10} {}",
            p.name(),
            p.netns(),
            p.ipv4(),
            v6,
            p.uid(),
            p.cgroup_id(),
            p.cgroup_path()
        );
    }
    if let Some(n) = &state.node {
        let v6 = n.ipv6.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "node {} at {} / {v6} (eth0), cgroup {} (id {})",
            n.netns,
            n.ipv4,
            n.cgroup_dir.display(),
            n.cgroup_id
        );
        for p in &state.host_pods {
            println!("host-network pod {} uid {} cgroup id {} {}", p.name(), p.uid(), p.cgroup_id(), p.cgroup_path());
        }
        for s in &state.services {
            let ips: Vec<String> = s.cluster_ips.iter().map(ToString::to_string).collect();
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| match p.node_port {
                    Some(np) => format!("{}/{}→{} (NodePort {np})", p.port, p.protocol.kubernetes(), p.target_port),
                    None => format!("{}/{}→{}", p.port, p.protocol.kubernetes(), p.target_port),
                })
                .collect();
            let backends: Vec<String> = s.backends.iter().map(|b| b.ipv4.to_string()).collect();
            let ips = if ips.is_empty() { "headless".to_owned() } else { ips.join(",") };
            println!(
                "service {}/{} {ips} ports {} backends {}",
                s.namespace,
                s.name,
                ports.join(" "),
                backends.join(",")
            );
        }
    }
    if let Some(i) = &state.internet {
        let v6 = i.ipv6.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "internet netns {} at {} / {v6}, cgroup {} (id {})",
            i.netns,
            i.ipv4,
            i.cgroup_dir.display(),
            i.cgroup_id
        );
    }
}
