//! The CLI shell of `causeway status`, `explain` and `diagnose`: fetch the gateway's admin API
//! (`admin::client`), ask DNS where a check needs it (`admin::lookup`), print a table or the
//! JSON document. What to compute and print lives in `status`, `explain`, `diagnose`.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use causeway_dns::proto::rr::RecordType;

use crate::admin::{client, lookup};
use crate::cli::{Command, ExplainType, OutputFormat};
use crate::diagnose::{self, Report};
use crate::status::api::{Explanation, Status};

/// Runs one of the inspection commands on a small runtime of its own; the other commands
/// are not for this function.
pub fn run(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let text = runtime.block_on(async {
        match command {
            Command::Status(args) => status(args.admin.admin, args.admin.output).await,
            Command::Explain(args) => {
                explain(args.admin.admin, &args.name, args.qtype, args.admin.output).await
            }
            Command::Diagnose(args) => diagnose(args.admin.admin, args.admin.output).await,
            _ => bail!("not an inspection command"),
        }
    })?;
    print!("{}", text.output);
    if let Some(failure) = text.failure {
        bail!(failure);
    }
    Ok(())
}

/// What a command prints, and why it must exit nonzero after printing it.
pub struct Printed {
    pub output: String,
    pub failure: Option<String>,
}

fn printed(output: String) -> Printed {
    Printed {
        output,
        failure: None,
    }
}

fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// `causeway status`.
pub async fn status(admin: SocketAddr, output: OutputFormat) -> anyhow::Result<Printed> {
    let status: Status = client::get_json(admin, "/api/v1/status").await?;
    Ok(printed(match output {
        OutputFormat::Json => json(&status)?,
        OutputFormat::Table => crate::status::render(&status),
    }))
}

/// `causeway explain NAME`.
pub async fn explain(
    admin: SocketAddr,
    name: &str,
    qtype: ExplainType,
    output: OutputFormat,
) -> anyhow::Result<Printed> {
    let qtype = match qtype {
        ExplainType::A => "A",
        ExplainType::Aaaa => "AAAA",
        ExplainType::Srv => "SRV",
    };
    // Names are DNS names: letters, digits, `-`, `_`, `.`; anything else is refused by the
    // server, so it needs no encoding beyond what it would refuse anyway.
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("{name:?} is not a DNS name");
    }
    let path = format!("/api/v1/explain?name={name}&type={qtype}");
    let explanation: Explanation = client::get_json(admin, &path).await?;
    Ok(printed(match output {
        OutputFormat::Json => json(&explanation)?,
        OutputFormat::Table => crate::explain::render(&explanation),
    }))
}

/// `causeway diagnose`: prints every check; fails (nonzero exit) if any failed.
pub async fn diagnose(admin: SocketAddr, output: OutputFormat) -> anyhow::Result<Printed> {
    let status: Status = client::get_json(admin, "/api/v1/status").await?;
    let server = diagnose::dns_server(&status, admin);
    let mut answers = Vec::new();
    for q in diagnose::dns_questions(&status) {
        let qtype = match q.qtype {
            "AAAA" => RecordType::AAAA,
            "SOA" => RecordType::SOA,
            _ => RecordType::A,
        };
        let answer = lookup::lookup(server, &q.name, qtype).await;
        answers.push((q, answer));
    }
    let checks = diagnose::checks(&status, &answers);
    let report = Report {
        cluster: status.cluster.clone(),
        passed: checks.iter().all(|c| c.pass),
        checks,
    };
    let failed = report.checks.iter().filter(|c| !c.pass).count();
    Ok(Printed {
        output: match output {
            OutputFormat::Json => json(&report)?,
            OutputFormat::Table => diagnose::render(&report),
        },
        failure: (failed > 0).then(|| {
            format!(
                "{failed} of {} checks failed on {}",
                report.checks.len(),
                report.cluster
            )
        }),
    })
}
