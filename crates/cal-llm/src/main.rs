//! The Cal-LLM story in one command: `cal-llm demo` starts the workloads on loopback
//! addresses (127.0.4.x), runs `portcullis run` on `examples/cal-llm`, sends traffic, and
//! prints what each of the three patterns did:
//!
//! 1. ingress: the web app's page through Gateway `eg` by hostname (and 404 for another host);
//! 2. mesh: N calls to the `calendar` Service split ≈40/60 between calendar and calendar-v2;
//! 3. egress: calendar-v2 reaches `api.mistral.ai` (a local stand-in) through the egress
//!    proxy, and another host is refused.
//!
//! It exits non-zero when any of them does not behave, so it doubles as an end-to-end test.
//! With `--serve` everything keeps running afterwards, for `curl`.

mod calendar;
mod in_pods;
mod llm;
mod pods;
mod web;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tonic::transport::Endpoint;

const PROXY: &str = "127.0.4.1:3128";
const ADMIN: &str = "127.0.4.1:9901";
const GATEWAY_ADDRESS: &str = "127.0.4.2";
const CALENDAR_CLUSTER_IP: &str = "127.0.4.10:8080";
const CALENDAR_V1: &str = "127.0.4.11:9090";
const CALENDAR_V2: &str = "127.0.4.12:9090";
const WEB_APP: &str = "127.0.4.20:8080";
const LLM: &str = "127.0.4.50:8443";
const OTHER_HOST: &str = "127.0.4.51:8443";

#[derive(Parser, Debug)]
#[command(name = "cal-llm", about = "The Cal-LLM demo around portcullis")]
enum Cli {
    /// Start everything, send traffic, print what happened.
    Demo(DemoArgs),
    /// Serve calendar v1 alone until interrupted (the gRPC upstream of the benchmark's
    /// scenario C).
    Calendar {
        /// Address to listen on (h2c).
        #[arg(long)]
        listen: SocketAddr,
    },
    /// One `ListSessions` call; exits 0 when it succeeds (the benchmark's readiness check).
    Call {
        /// Where to connect (h2c).
        #[arg(long)]
        target: SocketAddr,
        /// The `:authority` to send (default: the target).
        #[arg(long)]
        authority: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// The portcullis binary (default: next to this one).
    #[arg(long)]
    portcullis: Option<PathBuf>,
    /// The manifests directory.
    #[arg(long, default_value = "examples/cal-llm")]
    config: PathBuf,
    /// Calendar calls sent to measure the split.
    #[arg(long, default_value_t = 500)]
    calls: u32,
    /// Keep serving after the checks, until interrupted.
    #[arg(long)]
    serve: bool,
    /// Run each workload in a network namespace of its own with a transparent sidecar, as
    /// pods in a cluster (needs root, iproute2, iptables and setpriv).
    #[arg(long)]
    netns: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli {
        Cli::Demo(args) => runtime.block_on(demo(args)),
        Cli::Calendar { listen } => runtime
            .block_on(calendar::Calendar::v1().serve(listen))
            .map(|()| true),
        Cli::Call { target, authority } => runtime.block_on(call(target, authority)),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The `portcullis run` process; killed by its PID when dropped.
struct Portcullis(Child);

impl Drop for Portcullis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `ListSessions` call to `target`, with `authority` as `:authority`.
async fn call(target: SocketAddr, authority: Option<String>) -> anyhow::Result<bool> {
    let mut endpoint = Endpoint::from_shared(format!("http://{target}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if let Some(authority) = authority {
        endpoint = endpoint.origin(format!("http://{authority}").parse()?);
    }
    let channel = endpoint.connect().await?;
    match calendar::list_sessions(channel, false).await {
        Ok(reply) => {
            println!("{} sessions from {}", reply.sessions.len(), reply.version);
            Ok(true)
        }
        Err(status) => {
            eprintln!("call failed: {status}");
            Ok(false)
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    if args.netns {
        return in_pods::demo(args).await;
    }
    let addr = |text: &str| -> anyhow::Result<SocketAddr> { Ok(text.parse()?) };
    // The workloads.
    let pki = llm::Pki::new(&["api.mistral.ai", "example.com"])?;
    pki.serve(
        addr(LLM)?,
        "Gateway API routes ingress, mesh and egress traffic.",
    )
    .await?;
    pki.serve(addr(OTHER_HOST)?, "this answer must never arrive")
        .await?;
    let llm = Arc::new(llm::LlmClient {
        route: llm::Route::Proxy(addr(PROXY)?),
        roots: Arc::clone(&pki.roots),
        host: "api.mistral.ai".into(),
        port: addr(LLM)?.port(),
    });
    let v1 = addr(CALENDAR_V1)?;
    let v2 = addr(CALENDAR_V2)?;
    tokio::spawn(calendar::Calendar::v1().serve(v1));
    tokio::spawn(calendar::Calendar::v2(Arc::clone(&llm)).serve(v2));
    let calendar = Endpoint::from_shared(format!("http://{CALENDAR_CLUSTER_IP}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    web::serve(addr(WEB_APP)?, calendar.clone()).await?;

    // The gateway.
    let binary = portcullis_binary(args.portcullis.as_deref())?;
    let resolve = [
        format!("api.mistral.ai={}", addr(LLM)?.ip()),
        format!("example.com={}", addr(OTHER_HOST)?.ip()),
    ];
    let mut command = Command::new(&binary);
    command
        .args(["run", "--config"])
        .arg(&args.config)
        .args(["--admin", ADMIN])
        .args(["--address-pool", &format!("{GATEWAY_ADDRESS}/32")])
        .args(["--egress-proxy", PROXY, "--workload-namespace", "apps"]);
    for entry in &resolve {
        command.args(["--resolve", entry]);
    }
    let child = command
        .env("PORTCULLIS_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it: cargo build -p portcullis)",
                binary.display()
            )
        })?;
    let _portcullis = Portcullis(child);
    wait_ready().await?;
    println!(
        "portcullis: {} on {}",
        binary.display(),
        args.config.display()
    );

    let mut ok = true;
    ok &= ingress(GATEWAY_ADDRESS).await;
    ok &= canary(calendar, args.calls, CALENDAR_CLUSTER_IP).await;
    println!(
        "\n3. egress: EgressNetwork apps/deny-all, TLSRoute allow-mistral-ai-access, via the proxy at {PROXY}"
    );
    ok &= egress(&llm).await;
    ok &= egress_metrics(ADMIN).await;
    conclude(ok);
    if args.serve {
        println!(
            "serving until interrupted; try: curl -H 'Host: www.cal-llm.com' http://{GATEWAY_ADDRESS}:8080/"
        );
        tokio::signal::ctrl_c().await?;
    }
    Ok(ok)
}

/// The portcullis binary: `--portcullis`, or the one next to this executable.
fn portcullis_binary(given: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path.to_path_buf()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("the executable has no directory")?
            .join("portcullis")),
    }
}

fn conclude(ok: bool) {
    println!(
        "{}",
        if ok {
            "\nall three patterns behave"
        } else {
            "\nSOMETHING DID NOT BEHAVE"
        }
    );
}

async fn wait_ready() -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = format!("http://{ADMIN}/ready");
    while Instant::now() < deadline {
        if let Ok((200, _)) = get(&ready, None).await {
            // The Gateway's address is programmed once it answers.
            let page = format!("http://{GATEWAY_ADDRESS}:8080/");
            if get(&page, Some("www.cal-llm.com")).await.is_ok() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("portcullis did not become ready within 20 s")
}

fn report(ok: bool, line: &str) -> bool {
    println!("  [{}] {line}", if ok { "ok" } else { "FAIL" });
    ok
}

async fn ingress(gateway: &str) -> bool {
    println!(
        "\n1. ingress: Gateway apps/eg at {gateway}:8080, HTTPRoute web-app for www.cal-llm.com"
    );
    let page = format!("http://{gateway}:8080/");
    let mut ok = match get(&page, Some("www.cal-llm.com")).await {
        Ok((status, body)) => {
            let sessions = body.matches("<li>").count();
            let served_by = body
                .lines()
                .find(|l| l.starts_with("<p>served by"))
                .unwrap_or("")
                .to_string();
            report(
                status == 200 && sessions == 3,
                &format!("Host www.cal-llm.com: {status}, {sessions} sessions listed, {served_by}"),
            )
        }
        Err(error) => report(false, &format!("Host www.cal-llm.com: {error}")),
    };
    ok &= match get(&page, Some("www.example.com")).await {
        Ok((status, _)) => report(
            status == 404,
            &format!("Host www.example.com: {status} (no route)"),
        ),
        Err(error) => report(false, &format!("Host www.example.com: {error}")),
    };
    ok
}

async fn canary(calendar: tonic::transport::Channel, calls: u32, cluster_ip: &str) -> bool {
    println!(
        "\n2. mesh: GRPCRoute calendar on Service calendar:8080 ({cluster_ip}), weights 40/60"
    );
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut failures = 0;
    for _ in 0..calls {
        match calendar::list_sessions(calendar.clone(), false).await {
            Ok(reply) => *counts.entry(reply.version).or_default() += 1,
            Err(_) => failures += 1,
        }
    }
    let share = |name: &str| {
        f64::from(counts.get(name).copied().unwrap_or(0)) * 100.0 / f64::from(calls.max(1))
    };
    let (v1, v2) = (share("calendar"), share("calendar-v2"));
    // Five standard deviations of a 40% binomial share.
    let bound = 5.0 * (0.4f64 * 0.6 / f64::from(calls.max(1))).sqrt() * 100.0;
    report(
        failures == 0 && (v1 - 40.0).abs() <= bound && (v2 - 60.0).abs() <= bound,
        &format!(
            "{calls} calls on one connection: calendar {v1:.1}%, calendar-v2 {v2:.1}%, {failures} failed"
        ),
    )
}

/// Egress from a workload: the API allowed, another host denied.
async fn egress(llm: &llm::LlmClient) -> bool {
    let port = llm.port;
    let ok = match llm.summarize("the Cal-LLM conference").await {
        Ok(summary) => report(true, &format!("api.mistral.ai:{port} allowed: {summary:?}")),
        Err(error) => report(false, &format!("api.mistral.ai:{port}: {error:#}")),
    };
    ok & match llm.post("example.com", "/", "{}").await {
        Ok(body) => report(false, &format!("example.com:{port} was allowed: {body}")),
        Err(error) => report(true, &format!("example.com:{port} denied ({error:#})")),
    }
}

/// The egress decisions in the proxy's metrics, a denial among them.
async fn egress_metrics(admin: &str) -> bool {
    let metrics = get(&format!("http://{admin}/metrics"), None).await;
    let decisions: Vec<String> = match metrics {
        Ok((_, body)) => body
            .lines()
            .filter(|l| l.starts_with("portcullis_egress_decisions_total{"))
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    };
    let ok = report(
        decisions.iter().any(|l| l.contains(r#"decision="deny""#)),
        "every decision is in /metrics:",
    );
    for line in decisions {
        println!("       {line}");
    }
    ok
}

/// One HTTP/1.1 GET; status and body.
async fn get(url: &str, host: Option<&str>) -> anyhow::Result<(u16, String)> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri.authority().context("no authority")?.to_string();
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&authority),
    )
    .await
    .context("connect timed out")??;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(uri.path())
        .header("host", host.unwrap_or(&authority))
        .body(Empty::<bytes::Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .context("request timed out")??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
