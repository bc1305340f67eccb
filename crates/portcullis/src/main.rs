//! The `portcullis` binary: CLI, wiring of the pipeline, admin server, signals.
//!
//! Stage: all of them, wired together. `run` drives *sources → snapshot → translate → data
//! plane* in a loop; `check` and `explain` run the pure half (sources, translate) once and
//! print the result. All logic lives in the library crates; this crate only connects them,
//! publishes status and handles process concerns.

/// jemalloc instead of glibc's malloc: with 5,000 routes a reload spent about half its time
/// in glibc's bin coalescing (`malloc_consolidate`, `unlink_chunk`), and file change to served
/// took nearly twice as long. Idle memory grows by about 1 MiB (bench/RESULTS.md). Its
/// options (a background thread that returns freed pages) are set in `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod admin;
mod check;
mod explain;
mod init;
mod run;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

/// A Kubernetes Gateway API gateway.
#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the Gateways of a directory of manifests (reloading on change) or of a
    /// Kubernetes cluster (`--kube`).
    Run(Box<RunArgs>),
    /// Translate a directory offline and print every resource's status; exits non-zero when
    /// a manifest is invalid or a resource is not accepted.
    Check(CheckArgs),
    /// Show which listener, route, rule and backends a request would get.
    Explain(ExplainArgs),
    /// Install the iptables rules that redirect a workload's outbound TCP to
    /// `run --outbound` (run inside the workload's network namespace).
    Init(InitArgs),
    /// Print the CustomResourceDefinitions of our policy kinds (AuthenticationPolicy,
    /// RateLimitPolicy), for `kubectl apply -f -`.
    Crds,
}

#[derive(clap::Args, Debug)]
struct InitArgs {
    /// The UID the proxy runs as; its own connections are not redirected.
    #[arg(long, default_value_t = 2102)]
    proxy_uid: u32,
    /// The port of `run --outbound` on 127.0.0.1.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Destinations never redirected; repeatable.
    #[arg(long, value_name = "CIDR")]
    skip_cidr: Vec<IpNet>,
    /// Destination ports never redirected; repeatable.
    #[arg(long, value_name = "PORT")]
    skip_port: Vec<u16>,
    /// Remove the rules instead.
    #[arg(long)]
    remove: bool,
    /// Print the iptables commands instead of running them.
    #[arg(long)]
    dry_run: bool,
}

/// Options shared by every command that reads manifests.
#[derive(clap::Args, Debug, Clone)]
struct ConfigArgs {
    /// Directory of Kubernetes YAML manifests (read recursively).
    #[arg(long, value_name = "DIR")]
    config: PathBuf,
    #[command(flatten)]
    translate: TranslateArgs,
}

/// Options of the translation itself, in every mode.
#[derive(clap::Args, Debug, Clone)]
struct TranslateArgs {
    /// GatewayClasses with this controllerName are served.
    #[arg(
        long,
        alias = "gateway-class-controller",
        value_name = "NAME",
        default_value = translate::DEFAULT_CONTROLLER_NAME
    )]
    controller_name: String,
    /// Give each Gateway without spec.addresses its own address from this range.
    #[arg(long, value_name = "CIDR")]
    address_pool: Option<IpNet>,
    /// The cluster's networks: an EgressNetwork without `networks` covers everything else,
    /// and one whose networks overlap them is not accepted.
    #[arg(
        long,
        value_name = "CIDR,...",
        value_delimiter = ',',
        default_value = translate::DEFAULT_CLUSTER_NETWORKS
    )]
    cluster_networks: Vec<IpNet>,
    /// The namespace whose EgressNetworks apply to workloads of every namespace.
    #[arg(long, value_name = "NS", default_value = translate::DEFAULT_GLOBAL_EGRESS_NAMESPACE)]
    global_egress_namespace: String,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Directory of Kubernetes YAML manifests (read recursively), watched for changes.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    config: Option<PathBuf>,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    translate: TranslateArgs,
    /// Admin listener: /live, /ready, /config, /status.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The access log: one line per request or relayed connection (target
    /// `portcullis::access`), written by a background thread so that a slow stderr never
    /// holds up traffic.
    #[arg(long, value_enum, default_value_t = AccessLog::On)]
    access_log: AccessLog,
    /// Worker threads serving traffic (default: one per CPU core).
    #[arg(long, value_name = "N")]
    workers: Option<std::num::NonZeroUsize>,
    /// Transparent outbound listener: connections redirected here by iptables are served for
    /// their original destination (mesh routes of a Service address, or egress policy).
    #[arg(long, value_name = "ADDR")]
    outbound: Option<SocketAddr>,
    /// Explicit egress proxy listener (HTTP CONNECT and absolute-form http:// requests).
    #[arg(long, value_name = "ADDR")]
    egress_proxy: Option<SocketAddr>,
    /// The namespace of the workload whose outbound traffic this proxy carries: its
    /// EgressNetworks apply first.
    #[arg(long, value_name = "NS", default_value = "default")]
    workload_namespace: String,
    /// A fixed name resolution for the egress proxy, as HOST=IP; repeatable.
    #[arg(long = "resolve", value_name = "HOST=IP", value_parser = parse_resolve)]
    resolve: Vec<(String, std::net::IpAddr)>,
    /// The Redis that `Global` limits of RateLimitPolicies count in, shared by every
    /// replica (redis://HOST:PORT[/DB]). Without it, global limits are not enforced.
    #[arg(long, value_name = "URL")]
    rate_limit_redis: Option<String>,
    /// How an endpoint of a backend is chosen: power of two choices over peak-EWMA latency
    /// (Linkerd's default), or round robin.
    #[arg(long, value_enum, default_value_t = Balancer::PeakEwma)]
    load_balancer: Balancer,
    /// Time allowed for an ExternalAuth service to answer before the request is denied.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    external_auth_timeout: std::time::Duration,
    /// Time a client has to send a request's headers (HTTP/1.1), also the longest an idle
    /// keep-alive connection stays open; slower clients are disconnected.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    header_read_timeout: std::time::Duration,
    /// Client connections served at once over all sockets; more wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,
    /// Streams one HTTP/2 client connection may have open at once.
    #[arg(long, value_name = "N", default_value_t = 100)]
    http2_max_concurrent_streams: u32,
    /// Time in-flight requests get to finish on shutdown (SIGTERM), and connections of a
    /// listener removed from the config before they are closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    drain_timeout: std::time::Duration,
    /// Export a span per request to this OpenTelemetry collector (OTLP over gRPC,
    /// `http://HOST:PORT`), continuing the W3C `traceparent` of each request. Off by default.
    #[arg(long, value_name = "URL", value_parser = parse_otlp_endpoint)]
    otlp_endpoint: Option<String>,
    /// The share of new traces (requests without a `traceparent`) that are sampled; a
    /// caller's sampling decision is always followed.
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = parse_ratio, requires = "otlp_endpoint")]
    otlp_sample_ratio: f64,
    /// `service.name` of the exported spans.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "portcullis",
        requires = "otlp_endpoint"
    )]
    otlp_service_name: String,
    /// After each reload served by patching the previous config (a change of HTTPRoutes
    /// only), also compare it with a full translation and stop with an error if they differ.
    /// For tests: it serializes both configs on every such reload.
    #[arg(long, hide = true)]
    verify_patches: bool,
}

fn parse_otlp_endpoint(value: &str) -> Result<String, String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|error| format!("{value:?} is not a URL: {error}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(value.to_string()),
        _ => Err(format!(
            "{value:?} is not an http:// or https:// URL with a host"
        )),
    }
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{value:?} is not a number from 0 to 1")),
    }
}

/// `--load-balancer`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Balancer {
    /// Power of two choices over peak-EWMA latency and requests in flight.
    PeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
}

impl From<Balancer> for dataplane::LoadBalancer {
    fn from(balancer: Balancer) -> Self {
        match balancer {
            Balancer::PeakEwma => Self::PeakEwma,
            Balancer::RoundRobin => Self::RoundRobin,
        }
    }
}

fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    model::parse_duration(value)
        .ok_or_else(|| format!("{value:?} is not a duration such as 500ms, 5s or 1m"))
}

fn parse_resolve(value: &str) -> Result<(String, std::net::IpAddr), String> {
    let (host, ip) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not HOST=IP"))?;
    let ip = ip
        .parse()
        .map_err(|error| format!("{ip:?} is not an IP address: {error}"))?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    Ok((host, ip))
}

fn parse_object_name(value: &str) -> Result<model::ObjectName, String> {
    match value.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(model::ObjectName::new(namespace, name))
        }
        _ => Err(format!("{value:?} is not NAMESPACE/NAME")),
    }
}

/// Kubernetes mode.
#[derive(clap::Args, Debug)]
struct KubeArgs {
    /// Read resources from the Kubernetes API (in-cluster or kubeconfig credentials) and
    /// write their status while holding the leader Lease.
    #[arg(long)]
    kube: bool,
    /// Name of the Lease that elects the replica writing status.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "portcullis-leader",
        requires = "kube"
    )]
    lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, value_name = "NAMESPACE", requires = "kube")]
    lease_namespace: Option<String>,
    /// Serve traffic only: no leader election, no status writes, no provisioning (the mode
    /// of provisioned per-Gateway pods).
    #[arg(long, requires = "kube")]
    serve_only: bool,
    /// With `--serve-only`: serve only this Gateway (NAMESPACE/NAME) and its ListenerSets,
    /// as a provisioned per-Gateway pod does; other Gateways and mesh Services get no
    /// sockets.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "serve_only", value_parser = parse_object_name)]
    gateway: Option<model::ObjectName>,
    /// Provision a Deployment running this image and a LoadBalancer Service for every
    /// accepted Gateway; Gateways then report the load balancer's addresses.
    #[arg(
        long,
        value_name = "IMAGE",
        requires = "kube",
        conflicts_with = "serve_only"
    )]
    provision_image: Option<String>,
    /// Service account of the provisioned pods (in each Gateway's namespace; it needs
    /// read access to the watched kinds).
    #[arg(long, value_name = "NAME", requires = "provision_image")]
    provision_service_account: Option<String>,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

#[derive(clap::Args, Debug)]
struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The Gateway, as NAMESPACE/NAME.
    #[arg(
        long,
        value_name = "NS/NAME",
        required_unless_present = "service",
        conflicts_with = "service"
    )]
    gateway: Option<String>,
    /// A Service whose mesh routes (parentRef kind Service) to explain, as NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    service: Option<String>,
    /// Only consider listeners (or, with --service, the Service port) on this port.
    #[arg(long)]
    port: Option<u16>,
    /// The request's Host (default with --service: the Service's name).
    #[arg(long, required_unless_present = "service")]
    host: Option<String>,
    /// The request path, optionally with ?query.
    #[arg(long, default_value = "/")]
    path: String,
    /// The request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Explain a gRPC call of this method (package.Service/Method): POST to /package.Service/Method
    /// with content-type application/grpc.
    #[arg(long, value_name = "SERVICE/METHOD", conflicts_with = "path")]
    grpc_method: Option<String>,
    /// A request header as NAME=VALUE; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OutputFormat {
    Table,
    Yaml,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum AccessLog {
    On,
    Off,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            // Held until the process ends: dropping it flushes the log writer.
            let _flush = init_logging(args.log_format, args.access_log);
            run::run(*args)
        }
        Command::Check(args) => check::check(&args),
        Command::Explain(args) => explain::explain(&args),
        Command::Init(args) => init::init(&args),
        Command::Crds => {
            print!("{}", model::policy::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Log lines that may wait for stderr with the access log on.
const LOG_QUEUE_LINES: usize = 16_384;

/// Log lines that may wait for stderr with the access log off: warnings and errors, and the
/// info lines of reloads and listeners. A reload with thousands of rejected manifests can
/// still outrun the writer; what does not fit is dropped, as access log lines are.
const LOG_QUEUE_LINES_WITHOUT_ACCESS: usize = 1_024;

/// Logs go to stderr through a non-blocking writer: lines are dropped rather than blocking a
/// worker when stderr cannot keep up, and `/metrics` reports how many
/// (`portcullis_log_lines_dropped_total`).
fn init_logging(
    format: LogFormat,
    access: AccessLog,
) -> tracing_appender::non_blocking::WorkerGuard {
    let base = std::env::var("PORTCULLIS_LOG").unwrap_or_else(|_| "info".to_string());
    let directives = match access {
        AccessLog::On => base,
        AccessLog::Off => format!("{base},portcullis::access=off"),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The queue's slots are allocated and written up front (32 bytes each): tracing-appender's
    // default of 128,000 lines was 4 MiB of the idle process (a fifth of its RSS). 16,384
    // lines hold about 0.4 s of access log at 40,000 requests per second before lines are
    // dropped; without the access log their 512 KiB were a fifth of the idle process's
    // anonymous memory.
    let lines = match access {
        AccessLog::On => LOG_QUEUE_LINES,
        AccessLog::Off => LOG_QUEUE_LINES_WITHOUT_ACCESS,
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(lines)
        .lossy(true)
        .finish(std::io::stderr());
    // Logging starts once per process, so this is the only value it is set to.
    let _ = admin::LOG_DROPS.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

impl ConfigArgs {
    /// The translate options these flags describe.
    fn translate_options(&self) -> translate::Options {
        self.translate.translate_options()
    }
}

impl TranslateArgs {
    /// The translate options these flags describe.
    fn translate_options(&self) -> translate::Options {
        translate::Options {
            controller_name: self.controller_name.clone(),
            address_pool: self.address_pool,
            cluster_networks: self.cluster_networks.clone(),
            global_egress_namespace: self.global_egress_namespace.clone(),
            ..translate::Options::default()
        }
    }
}
