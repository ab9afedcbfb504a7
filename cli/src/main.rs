//! `meshctl`, the meshplane command line, built on the Rust SDK.
//!
//! Exit codes: 0 success; 1 the server refused (the gRPC code, its message
//! and each field violation are printed) or a local step failed; 2 usage.

mod agent;
mod commands;
mod output;
mod quickstart;
mod resolve;
mod wgquick;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use meshplane_sdk::{Client, ClientBuilder, TlsConfig};

use output::Format;

/// meshctl: manage meshplane networks, nodes, gateways and clients.
#[derive(Parser)]
#[command(name = "meshctl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options of every command.
#[derive(Args, Clone)]
pub struct Global {
    /// Server address.
    #[arg(
        long,
        env = "MESHCTL_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// Admin token (default: --token-file).
    #[arg(long, env = "MESHCTL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the admin token [default: ./meshplane-data/admin.token,
    /// when present].
    #[arg(
        long,
        env = "MESHCTL_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    /// Deadline of each call in seconds, retries included.
    #[arg(long, default_value_t = 30, global = true, value_name = "SECONDS")]
    timeout: u64,
    /// CA certificate(s) (PEM) to verify an https:// server with, instead
    /// of the system's.
    #[arg(long, env = "MESHCTL_CA_FILE", global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) to present over https://, for servers that
    /// verify clients (`serve --client-ca`; agents need one there).
    #[arg(
        long,
        env = "MESHCTL_CLIENT_CERT",
        global = true,
        requires = "client_key",
        value_name = "FILE"
    )]
    client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "MESHCTL_CLIENT_KEY",
        global = true,
        requires = "client_cert",
        value_name = "FILE"
    )]
    client_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Networks: address ranges and the defaults handed to nodes and clients.
    #[command(subcommand)]
    Network(commands::NetworkCmd),
    /// Enrollment keys that let agents register nodes.
    #[command(subcommand)]
    Key(commands::KeyCmd),
    /// Nodes (hosts running an agent) and the config each one receives.
    #[command(subcommand)]
    Node(commands::NodeCmd),
    /// Egress gateways: a node routing outside ranges out of an interface.
    #[command(subcommand)]
    Egress(commands::EgressCmd),
    /// Ingress gateways: a node external clients connect through.
    #[command(subcommand)]
    Ingress(commands::IngressCmd),
    /// External clients: phones and laptops with a plain WireGuard config.
    #[command(subcommand, name = "extclient")]
    ExtClient(commands::ExtClientCmd),
    /// Names in a network's zone.
    #[command(subcommand)]
    Dns(commands::DnsCmd),
    /// The path a packet takes (ExplainRoute).
    #[command(subcommand)]
    Route(commands::RouteCmd),
    /// A network's access policy: get, set FILE, diff FILE (a preview),
    /// test (which rule decides a packet).
    #[command(subcommand)]
    Policy(commands::PolicyCmd),
    /// Resource changes as they happen.
    #[command(subcommand)]
    Events(commands::EventsCmd),
    /// The host agent: applies a node's config to this host.
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Whole setups in one command.
    #[command(subcommand)]
    Quickstart(quickstart::QuickstartCmd),
    /// Prints a shell completion script (e.g. `meshctl completion bash >
    /// /etc/bash_completion.d/meshctl`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Why a command failed.
pub enum Failure {
    /// The server said no (or could not be reached).
    Api(meshplane_sdk::Error),
    /// A NODE or CLIENT argument names nothing.
    NotFound(String),
    /// The command line does not say enough (exit 2).
    Usage(String),
    /// A local step failed (files, addresses).
    Local(String),
}

impl From<meshplane_sdk::Error> for Failure {
    fn from(e: meshplane_sdk::Error) -> Self {
        Failure::Api(e)
    }
}

/// Result of a command.
pub type Outcome = Result<(), Failure>;

/// What commands share: the client and the output format.
pub struct Ctx {
    /// The SDK client.
    pub client: Client,
    /// `-o`.
    pub format: Format,
    /// `--server`, for messages.
    pub server: String,
    /// The TLS flags given (`--ca-file FILE` …), for the commands meshctl
    /// prints for other hosts to run.
    pub tls_args: Vec<String>,
}

impl Global {
    fn token(&self) -> Result<Option<String>, Failure> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_owned()));
        }
        let (path, explicit) = match &self.token_file {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("meshplane-data/admin.token"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t.trim().to_owned())),
            Err(e) if explicit => Err(Failure::Local(format!(
                "reading the token file {}: {e}",
                path.display()
            ))),
            Err(_) => Ok(None),
        }
    }

    /// A client builder for `--server` with the TLS flags applied (and no
    /// token: the agent sends its node's).
    pub fn builder(&self) -> Result<ClientBuilder, Failure> {
        let b = Client::builder(self.server.clone()).timeout(Duration::from_secs(self.timeout));
        let https = self.server.starts_with("https://");
        if !https {
            let flag = if self.ca_file.is_some() {
                Some("--ca-file (MESHCTL_CA_FILE)")
            } else if self.client_cert.is_some() {
                Some("--client-cert (MESHCTL_CLIENT_CERT)")
            } else {
                None
            };
            return match flag {
                Some(flag) => Err(Failure::Usage(format!(
                    "{flag} is for TLS, but --server {} is not https://; use https://HOST:PORT \
                     (the server prints its URL in its ready line)",
                    self.server
                ))),
                None => Ok(b),
            };
        }
        let mut tls = TlsConfig::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate_file(ca)?;
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity_files(cert, key)?;
        }
        Ok(b.tls(tls))
    }

    fn tls_args(&self) -> Vec<String> {
        [
            ("--ca-file", &self.ca_file),
            ("--client-cert", &self.client_cert),
            ("--client-key", &self.client_key),
        ]
        .into_iter()
        .filter_map(|(flag, path)| Some([flag.to_owned(), path.as_ref()?.display().to_string()]))
        .flatten()
        .collect()
    }

    fn connect(&self) -> Result<Ctx, Failure> {
        let mut b = self.builder()?;
        if let Some(t) = self.token()? {
            b = b.token(t);
        }
        Ok(Ctx {
            client: b.connect_lazy()?,
            format: self.output,
            server: self.server.clone(),
            tls_args: self.tls_args(),
        })
    }
}

fn report(f: Failure) -> ExitCode {
    match f {
        Failure::Api(e) => {
            eprintln!("Error: {}: {}", e.code_name(), e.message());
            for v in e.field_violations() {
                eprintln!("  field {}: {}", v.field, v.description);
            }
            if let Some(d) = e.retry_delay() {
                eprintln!("  retry in {} s", d.as_secs().max(1));
            }
            if e.kind() == meshplane_sdk::ErrorKind::Tls {
                eprintln!(
                    "  (TLS flags: --ca-file / MESHCTL_CA_FILE for the server's CA, \
                     --client-cert and --client-key / MESHCTL_CLIENT_CERT and MESHCTL_CLIENT_KEY \
                     for this client's certificate)"
                );
            }
            if e.code() == meshplane_sdk::Code::Unauthenticated {
                eprintln!(
                    "  (pass --token, set MESHCTL_TOKEN, or --token-file PATH; the server writes \
                     <data dir>/admin.token)"
                );
            }
            ExitCode::from(1)
        }
        Failure::NotFound(m) => {
            eprintln!("Error: NOT_FOUND: {m}");
            ExitCode::from(1)
        }
        Failure::Local(m) => {
            eprintln!("Error: {m}");
            ExitCode::from(1)
        }
        Failure::Usage(m) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    // Die quietly when the reader of our output goes away (`| head`), as
    // Unix tools do, instead of panicking on EPIPE.
    // SAFETY: setting a signal's disposition to its default at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Command::Completion { shell } = cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "meshctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        let ctx = cli.global.connect()?;
        match cli.command {
            Command::Network(c) => c.run(&ctx).await,
            Command::Key(c) => c.run(&ctx).await,
            Command::Node(c) => c.run(&ctx).await,
            Command::Egress(c) => c.run(&ctx).await,
            Command::Ingress(c) => c.run(&ctx).await,
            Command::ExtClient(c) => c.run(&ctx).await,
            Command::Dns(c) => c.run(&ctx).await,
            Command::Route(c) => c.run(&ctx).await,
            Command::Policy(c) => c.run(&ctx).await,
            Command::Events(c) => c.run(&ctx).await,
            Command::Quickstart(c) => c.run(&ctx).await,
            Command::Agent(c) => c.run(&ctx.server, cli.global.builder()?).await,
            Command::Completion { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(f),
    }
}
