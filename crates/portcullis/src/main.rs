//! The `portcullis` binary: CLI, wiring of the pipeline, admin server, signals.
//!
//! Stage: all of them, wired together. `run` drives *sources → snapshot → translate → data
//! plane* in a loop; `check` and `explain` run the pure half (sources, translate) once and
//! print the result. All logic lives in the library crates; this crate only connects them,
//! publishes status and handles process concerns.

mod admin;
mod check;
mod explain;
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
    Run(RunArgs),
    /// Translate a directory offline and print every resource's status; exits non-zero when
    /// a manifest is invalid or a resource is not accepted.
    Check(CheckArgs),
    /// Show which listener, route, rule and backends a request would get.
    Explain(ExplainArgs),
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
    /// Worker threads serving traffic (default: one per CPU core).
    #[arg(long, value_name = "N")]
    workers: Option<std::num::NonZeroUsize>,
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
    #[arg(long, value_name = "NS/NAME")]
    gateway: String,
    /// Only consider listeners on this port.
    #[arg(long)]
    port: Option<u16>,
    /// The request's Host.
    #[arg(long)]
    host: String,
    /// The request path, optionally with ?query.
    #[arg(long, default_value = "/")]
    path: String,
    /// The request method.
    #[arg(long, default_value = "GET")]
    method: String,
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
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            init_logging(args.log_format);
            run::run(args)
        }
        Command::Check(args) => check::check(&args),
        Command::Explain(args) => explain::explain(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
            ..translate::Options::default()
        }
    }
}
