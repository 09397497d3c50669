//! `edgefn domains`: the host names a project claims, proves and routes.

use clap::Subcommand;
use edgefn_proto::api::{CreateDomain, Domain};

use crate::client::Client;
use crate::output::{Output, time};

#[derive(Debug, Subcommand)]
pub enum DomainsCommand {
    /// Claim a domain (`shop.example.com`, or `*.shop.example.com` for every name under it)
    /// and print the DNS TXT record that proves it.
    Add {
        name: String,
        #[arg(long, default_value = "default")]
        project: String,
        /// Mark it verified without the DNS proof (administrators).
        #[arg(long)]
        verified: bool,
    },
    /// The domains of a project.
    List {
        #[arg(long, default_value = "default")]
        project: String,
    },
    /// Check the domain's TXT record and mark it verified.
    Verify {
        name: String,
        #[arg(long, default_value = "default")]
        project: String,
    },
    /// Remove a domain (refused while a route uses it).
    Rm {
        name: String,
        #[arg(long, default_value = "default")]
        project: String,
    },
}

fn state(domain: &Domain) -> &'static str {
    if domain.verified {
        "verified"
    } else {
        "pending"
    }
}

pub async fn domains(client: &Client, out: &Output, command: DomainsCommand) -> anyhow::Result<()> {
    match command {
        DomainsCommand::Add {
            name,
            project,
            verified,
        } => {
            let domain: Domain = client
                .post(
                    &format!("/projects/{project}/domains"),
                    &CreateDomain { name, verified },
                )
                .await?;
            out.item(&domain, || {
                if domain.verified {
                    format!("Added {} to {project}, verified.", domain.name)
                } else {
                    format!(
                        "Added {} to {project}. Prove it with this DNS record, then run `edgefn domains verify {} --project {project}`:\n  {} TXT \"{}\"",
                        domain.name, domain.name, domain.txt_record_name, domain.txt_record_value
                    )
                }
            });
        }
        DomainsCommand::List { project } => {
            let domains: Vec<Domain> = client.get(&format!("/projects/{project}/domains")).await?;
            let rows = domains.iter().map(|d| {
                vec![
                    d.name.clone(),
                    state(d).to_string(),
                    d.txt_record_name.clone(),
                    d.txt_record_value.clone(),
                    time(d.created_at),
                ]
            });
            out.list(
                &domains,
                &["name", "state", "txt record", "txt value", "created"],
                rows,
            );
        }
        DomainsCommand::Verify { name, project } => {
            let domain: Domain = client
                .post(
                    &format!("/projects/{project}/domains/{name}/verify"),
                    &serde_json::json!({}),
                )
                .await?;
            out.item(&domain, || {
                format!("{} is verified for {project}.", domain.name)
            });
        }
        DomainsCommand::Rm { name, project } => {
            client
                .send_empty(
                    reqwest::Method::DELETE,
                    &format!("/projects/{project}/domains/{name}"),
                )
                .await?;
            out.item(&serde_json::json!({ "removed": name }), || {
                format!("Removed {name} from {project}.")
            });
        }
    }
    Ok(())
}
