//! `kiln keys new`: makes an API key and prints the `[[auth.keys]]` entry that accepts it.
//! The server only ever stores the key's SHA-256, so the key is shown this once.

use crate::auth::{hash_key, new_key};

/// `kiln keys …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a new random API key and print it with its config entry.
    New(NewKeyArgs),
}

/// `kiln keys new`.
#[derive(Debug, clap::Args)]
pub struct NewKeyArgs {
    /// A name for the key (letters, digits, '-', '_'), shown in logs.
    #[arg(long)]
    pub name: String,
    /// `client` (one tenant's jobs) or `admin` (every job and the operator routes).
    #[arg(long, value_parser = ["client", "admin"], default_value = "client")]
    pub role: String,
    /// The tenant of a client key.
    #[arg(long)]
    pub tenant: Option<String>,
}

/// Prints the key on stdout (so it can be captured alone) and the entry on stderr.
pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    let KeysCommand::New(args) = command;
    anyhow::ensure!(
        args.role == "admin" || args.tenant.is_some(),
        "a client key needs --tenant"
    );
    let key = new_key()?;
    let tenant = args
        .tenant
        .map(|t| format!("tenant = {t:?}\n"))
        .unwrap_or_default();
    eprintln!(
        "Add this to the server's config file; the key itself (on stdout) is not stored \
         anywhere, so keep it now:\n\n[[auth.keys]]\nname = {:?}\nrole = {:?}\n{tenant}sha256 = {:?}\n",
        args.name,
        args.role,
        hash_key(&key)
    );
    println!("{key}");
    Ok(())
}
