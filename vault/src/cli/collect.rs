//! `mnvault collect`: ask an employee for their number on the vault's page,
//! and follow the answer. Payroll gets tokens; nobody here sees a number.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use futures::StreamExt;
use mnvault_client::collection::{Collection, CollectionState, NewCollection};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

use super::{when, Connection};

/// Collection commands (as the tenant's payroll).
#[derive(Debug, Subcommand)]
pub enum CollectCommand {
    /// Open a collection and print its one-time link, with a QR code to
    /// scan from a phone. The link is shown once: the vault keeps only a
    /// keyed hash of it.
    Create(CreateArgs),
    /// Show a collection: its state and, once submitted, its tokens.
    Show(Named),
    /// Wait until the collections are submitted, cancelled or expired,
    /// printing each as it settles.
    Watch {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Collection ids (1 to 100).
        #[arg(long = "id", required = true)]
        collection_ids: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel an open collection: its link stops working at once.
    Cancel(Named),
}

/// One collection, named.
#[derive(Debug, Args)]
pub struct Named {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The collection id `collect create` printed.
    #[arg(long = "id")]
    pub collection_id: String,
    #[command(flatten)]
    pub connection: Connection,
}

/// `mnvault collect create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// Payroll's own reference for the person (an employee code; never a number).
    #[arg(long = "ref", value_name = "REFERENCE")]
    pub reference: String,
    /// Dependants whose numbers are asked for too, after the employee's
    /// (relation "dependant"; name relations with --dependant instead).
    #[arg(long, default_value_t = 0, conflicts_with = "dependant")]
    pub dependants: u32,
    /// A dependant's relation, once per dependant: spouse, child, parent,
    /// grandparent, grandchild, sibling, dependant.
    #[arg(long = "dependant", value_name = "RELATION")]
    pub dependant: Vec<String>,
    /// Ask only for the dependants' numbers, not the employee's.
    #[arg(long)]
    pub no_employee: bool,
    /// A re-issue: the token whose number the municipality replaced. The
    /// collection asks for the one new number (the employee's, or with
    /// --no-employee --dependant R a dependant's), which goes under this
    /// same token; the old number stays under the token `superseded` shows.
    #[arg(long, value_name = "TOKEN", conflicts_with = "dependants")]
    pub reissue: Option<String>,
    /// Why the numbers are collected, comma-separated purpose ids (`mnvault job purposes`).
    #[arg(long, default_value = "withholding-slip,dependent-deduction-declaration")]
    pub purposes: String,
    /// How long the link works, e.g. "7d", "48h" (at most 30 days).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
    pub lifetime: std::time::Duration,
    /// Print no QR code.
    #[arg(long)]
    pub no_qr: bool,
    #[command(flatten)]
    pub connection: Connection,
}

impl CreateArgs {
    fn relations(&self) -> Vec<String> {
        let employee = (!self.no_employee).then(|| "employee".to_owned());
        let dependants: Vec<String> = if self.dependant.is_empty() {
            (0..self.dependants).map(|_| "dependant".to_owned()).collect()
        } else {
            self.dependant.clone()
        };
        employee.into_iter().chain(dependants).collect()
    }
}

/// Runs a `collect` command.
pub async fn run(command: CollectCommand, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    match command {
        CollectCommand::Create(args) => {
            let client = args.connection.connect(data_dir).await?;
            let asked = NewCollection {
                reference: args.reference.clone(),
                relations: args.relations(),
                purposes: args.purposes.split(',').map(|p| p.trim().to_owned()).collect(),
                lifetime_seconds: args.lifetime.as_secs(),
                reissue_token: args.reissue.clone(),
            };
            let created = client.create_collection(&args.tenant, asked).await?;
            let collection = created.collection.context("the vault answered without the collection")?;
            write_collection(&collection, out)?;
            writeln!(out, "link\t{}", created.link)?;
            if !args.no_qr {
                let code = QrCode::new(created.link.as_bytes()).context("the link does not fit in a QR code")?;
                // Light modules drawn, so the code scans on a dark terminal too.
                let drawn = code
                    .render::<Dense1x2>()
                    .dark_color(Dense1x2::Light)
                    .light_color(Dense1x2::Dark)
                    .quiet_zone(true)
                    .build();
                writeln!(out, "{drawn}")?;
            }
            writeln!(
                out,
                "hand the link to the employee; follow it with: mnvault collect watch --tenant {} --id {}",
                collection.tenant, collection.collection_id
            )?;
            Ok(())
        }
        CollectCommand::Show(Named { tenant, collection_id, connection }) => {
            let collection = connection.connect(data_dir).await?.collection(&tenant, &collection_id).await?;
            Ok(write_collection(&collection, out)?)
        }
        CollectCommand::Watch { tenant, collection_ids, connection } => {
            let client = connection.connect(data_dir).await?;
            let mut waiting = collection_ids;
            // The vault ends a watch at its request timeout: watch the rest again.
            while !waiting.is_empty() {
                let mut settled = client.watch_collections(&tenant, waiting.clone()).await?;
                let mut cut_short = false;
                while let Some(item) = settled.next().await {
                    match item {
                        Ok(collection) => {
                            waiting.retain(|id| *id != collection.collection_id);
                            write_collection(&collection, out)?;
                            writeln!(out)?;
                        }
                        Err(error) if error.code() == Some(tonic::Code::DeadlineExceeded) => cut_short = true,
                        Err(error) => return Err(error.into()),
                    }
                }
                if !cut_short {
                    break;
                }
            }
            Ok(())
        }
        CollectCommand::Cancel(Named { tenant, collection_id, connection }) => {
            let collection = connection.connect(data_dir).await?.cancel_collection(&tenant, &collection_id).await?;
            Ok(write_collection(&collection, out)?)
        }
    }
}

fn state_name(state: i32) -> &'static str {
    match CollectionState::try_from(state) {
        Ok(CollectionState::Open) => "open",
        Ok(CollectionState::Submitted) => "submitted",
        Ok(CollectionState::Cancelled) => "cancelled",
        Ok(CollectionState::Expired) => "expired",
        _ => "unknown",
    }
}

fn write_collection(collection: &Collection, out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    writeln!(out, "collection\t{}", collection.collection_id)?;
    writeln!(out, "tenant\t{}", collection.tenant)?;
    writeln!(out, "reference\t{}", collection.reference)?;
    writeln!(out, "state\t{}", state_name(collection.state))?;
    writeln!(out, "purposes\t{}", collection.purposes.join(","))?;
    writeln!(out, "expires\t{}", when(&collection.expires_at))?;
    if collection.settled_at.is_some() {
        writeln!(out, "settled\t{}", when(&collection.settled_at))?;
    }
    for number in &collection.numbers {
        let token = if number.token.is_empty() { "-" } else { &number.token };
        writeln!(out, "number\t{}\t{token}", number.relation)?;
    }
    if !collection.reissue_token.is_empty() {
        writeln!(out, "reissues\t{}", collection.reissue_token)?;
    }
    if !collection.superseded_token.is_empty() {
        writeln!(out, "superseded\t{}", collection.superseded_token)?;
    }
    Ok(())
}
