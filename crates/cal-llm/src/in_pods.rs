//! `cal-llm demo --netns`: the story as a cluster runs it. Each workload is a pod (a network
//! namespace, `pods.rs`); the gateway pod runs `portcullis run` for Gateway `eg`; the
//! web-app and calendar-v2 pods each run a sidecar (`portcullis run --outbound` as its own
//! user, with the iptables rules of `portcullis init`), so:
//!
//! - the web app calls the `calendar` Service at its ClusterIP (10.96.0.10, which no
//!   interface has); its sidecar intercepts the connection and applies the GRPCRoute's 40/60
//!   split between the two calendar pods;
//! - calendar-v2 connects straight to `api.mistral.ai:443` (a pod outside the cluster
//!   networks); its sidecar intercepts the connection and lets it through by its SNI, while
//!   a connection to another host is refused.
//!
//! The manifests are `examples/cal-llm` with the loopback addresses replaced by the pods'
//! and the API port 8443 by 443 (the loopback demo uses 8443 only to run without root).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tonic::transport::Endpoint;

use crate::pods::{Pod, Pods};
use crate::{DemoArgs, Portcullis, calendar, canary, egress, egress_metrics, get, ingress, llm};
use crate::{conclude, report, web};

const GATEWAY_IP: &str = "10.244.0.2";
const CALENDAR_V1_IP: &str = "10.244.0.11";
const CALENDAR_V2_IP: &str = "10.244.0.12";
const WEB_APP_IP: &str = "10.244.0.20";
const API_POD_IP: &str = "10.244.0.50";
/// The external API's addresses: outside the cluster networks, so egress policy applies.
const MISTRAL_IP: &str = "198.18.0.50";
const OTHER_HOST_IP: &str = "198.18.0.51";
const CLUSTER_IP: &str = "10.96.0.10";
/// The sidecars' user (excluded from redirection) and ports.
const PROXY_UID: u32 = 2102;
const OUTBOUND_PORT: u16 = 15001;
const SIDECAR_ADMIN: &str = "127.0.0.1:9901";

/// The manifests' loopback addresses and what they are in the pods.
const ADDRESSES: [(&str, &str); 5] = [
    ("127.0.4.10", CLUSTER_IP),
    ("127.0.4.11", CALENDAR_V1_IP),
    ("127.0.4.12", CALENDAR_V2_IP),
    ("127.0.4.20", WEB_APP_IP),
    ("port: 8443", "port: 443"),
];

pub async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    let binary = crate::portcullis_binary(args.portcullis.as_deref())?;
    let config = tempdir()?;
    write_config(&args.config, &config.0)?;

    let mut pods = Pods::new()?;
    let gateway = pods.add("gateway", &[GATEWAY_IP])?;
    let web_app = pods.add("web-app", &[WEB_APP_IP])?;
    let calendar_v1 = pods.add("calendar", &[CALENDAR_V1_IP])?;
    let calendar_v2 = pods.add("calendar-v2", &[CALENDAR_V2_IP])?;
    let api = pods.add("internet", &[API_POD_IP, MISTRAL_IP, OTHER_HOST_IP])?;
    println!(
        "pods: {} (ingress gateway), {} and {} (with sidecars), {}, {} (api.mistral.ai at {MISTRAL_IP}, example.com at {OTHER_HOST_IP})",
        gateway.namespace,
        web_app.namespace,
        calendar_v2.namespace,
        calendar_v1.namespace,
        api.namespace
    );

    // The workloads, each on a thread inside its pod.
    let pki = Arc::new(llm::Pki::new(&["api.mistral.ai", "example.com"])?);
    serve_in(&api, {
        let pki = Arc::clone(&pki);
        move || async move {
            pki.serve(
                sock(MISTRAL_IP, 443)?,
                "Gateway API routes ingress, mesh and egress traffic.",
            )
            .await?;
            pki.serve(sock(OTHER_HOST_IP, 443)?, "this answer must never arrive")
                .await
        }
    })?;
    // The pods resolve the API's names to the internet pod's addresses, as /etc/hosts would.
    let hosts = BTreeMap::from([
        ("api.mistral.ai".to_string(), MISTRAL_IP.parse()?),
        ("example.com".to_string(), OTHER_HOST_IP.parse()?),
    ]);
    let llm_client = || {
        Arc::new(llm::LlmClient {
            route: llm::Route::Direct(hosts.clone()),
            roots: Arc::clone(&pki.roots),
            host: "api.mistral.ai".into(),
            port: 443,
        })
    };
    serve_in(&calendar_v1, || async {
        tokio::spawn(calendar::Calendar::v1().serve(sock(CALENDAR_V1_IP, 9090)?));
        Ok(())
    })?;
    let v2_llm = llm_client();
    serve_in(&calendar_v2, move || async move {
        tokio::spawn(calendar::Calendar::v2(v2_llm).serve(sock(CALENDAR_V2_IP, 9090)?));
        Ok(())
    })?;
    serve_in(&web_app, || async {
        web::serve(sock(WEB_APP_IP, 8080)?, calendar_channel()?).await
    })?;

    // The sidecars and the gateway.
    let mut processes = Vec::new();
    for pod in [&web_app, &calendar_v2] {
        let status = pod
            .command(&binary)
            .args(["init", "--proxy-uid", &PROXY_UID.to_string()])
            .args(["--outbound-port", &OUTBOUND_PORT.to_string()])
            .status()
            .context("running portcullis init")?;
        if !status.success() {
            bail!("portcullis init failed in {}", pod.namespace);
        }
        let mut child = pod.command_as(PROXY_UID, &binary);
        child
            .args(["run", "--config"])
            .arg(&config.0)
            .args(["--admin", SIDECAR_ADMIN])
            .args(["--outbound", &format!("127.0.0.1:{OUTBOUND_PORT}")])
            .args(["--workload-namespace", "apps"]);
        processes.push(Portcullis(quiet(&mut child)?));
    }
    let mut child = gateway.command(&binary);
    child
        .args(["run", "--config"])
        .arg(&config.0)
        .args(["--admin", &format!("{GATEWAY_IP}:9901")])
        .args(["--address-pool", &format!("{GATEWAY_IP}/32")]);
    processes.push(Portcullis(quiet(&mut child)?));
    wait_ready(&[&web_app, &calendar_v2]).await?;
    println!(
        "portcullis: {} in every pod that needs it, on {}",
        binary.display(),
        args.config.display()
    );

    let mut ok = true;
    ok &= ingress(GATEWAY_IP).await;
    let calls = args.calls;
    ok &= join(web_app.spawn(move || async move {
        Ok(canary(
            calendar_channel()?,
            calls,
            &format!("{CLUSTER_IP}:8080, from the web-app pod"),
        )
        .await)
    }))?;
    println!(
        "\n3. egress: EgressNetwork apps/deny-all, TLSRoute allow-mistral-ai-access, from the calendar-v2 pod through its sidecar"
    );
    let client = llm_client();
    ok &= join(calendar_v2.spawn(move || async move {
        let allowed = egress(&client).await;
        Ok(allowed & egress_metrics(SIDECAR_ADMIN).await)
    }))?;
    // The page through the gateway again: calendar-v2's summaries come from the API, so the
    // whole chain (ingress, mesh, egress) worked for one request.
    let page = get(
        &format!("http://{GATEWAY_IP}:8080/"),
        Some("www.cal-llm.com"),
    )
    .await;
    if let Ok((status, body)) = page {
        let served_by = body
            .lines()
            .find(|l| l.starts_with("<p>served by"))
            .unwrap_or("")
            .to_string();
        println!("\n   the page once more: {status}, {served_by}");
    }
    conclude(ok);
    drop(processes);
    Ok(ok)
}

fn sock(ip: &str, port: u16) -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::new(ip.parse()?, port))
}

/// A channel to the `calendar` Service's ClusterIP; connecting from a pod with a sidecar,
/// the connection is intercepted.
fn calendar_channel() -> anyhow::Result<tonic::transport::Channel> {
    Ok(Endpoint::from_shared(format!("http://{CLUSTER_IP}:8080"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// Starts `start` in `pod` and keeps the pod's runtime running its tasks; fails if `start`
/// fails.
fn serve_in<F, Fut>(pod: &Pod, start: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (started, result) = std::sync::mpsc::channel();
    let _thread = pod.spawn(move || async move {
        let outcome = start().await;
        let failed = outcome.is_err();
        let _ = started.send(outcome);
        if !failed {
            // The workload's tasks run on this runtime until the process ends.
            std::future::pending::<()>().await;
        }
        Ok(())
    });
    result
        .recv_timeout(Duration::from_secs(10))
        .context("a workload did not start")?
}

fn join<T>(handle: std::thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    match handle.join() {
        Ok(result) => result,
        Err(_) => bail!("a pod's thread panicked"),
    }
}

/// Starts a portcullis process with errors only in its log. Every process reads the same
/// manifests, so each also tries to serve what is not its job here and logs warnings for
/// addresses it cannot bind: the sidecars, Gateway `eg`'s port (the workload's own port in
/// their pod) and the gateway, the calendar's ClusterIP (no interface has it; the sidecars
/// serve it by interception). A sidecar mode that leaves Gateways alone would remove them.
fn quiet(command: &mut std::process::Command) -> anyhow::Result<Child> {
    command
        .env("PORTCULLIS_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .context("starting portcullis (build it: cargo build -p portcullis)")
}

/// Waits for the gateway to serve the page and for the sidecars to be ready.
async fn wait_ready(sidecars: &[&Pod]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = format!("http://{GATEWAY_IP}:8080/");
    while Instant::now() < deadline {
        if get(&page, Some("www.cal-llm.com")).await.is_ok() {
            for pod in sidecars {
                let ready = join(pod.spawn(|| async {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while Instant::now() < deadline {
                        if let Ok((200, _)) =
                            get(&format!("http://{SIDECAR_ADMIN}/ready"), None).await
                        {
                            return Ok(true);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(false)
                }))?;
                if !ready {
                    bail!("the sidecar in {} did not become ready", pod.namespace);
                }
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = report(false, "the gateway never served the page");
    bail!("the gateway did not become ready within 30 s")
}

/// A temporary directory readable by the sidecars' user; removed on drop.
struct TempDir(std::path::PathBuf);

fn tempdir() -> anyhow::Result<TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("cal-llm-pods-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(TempDir(path))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the example's manifests with the pods' addresses.
fn write_config(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let entries = std::fs::read_dir(from).with_context(|| format!("{}", from.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let mut text = std::fs::read_to_string(&path)?;
        for (loopback, pod) in ADDRESSES {
            text = text.replace(loopback, pod);
        }
        let target = to.join(path.file_name().context("a file name")?);
        std::fs::write(&target, text)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}
