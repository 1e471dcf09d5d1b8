//! `login` and `logout`: credentials in Docker's `config.json`, shared with
//! the docker CLI. Login checks the credentials against the registry before
//! storing them, as `docker login` does.

use super::image::{LoginArgs, LogoutArgs};
use crate::context::Context;
use crate::exit;
use anyhow::{bail, Context as _};
use std::io::{BufRead, IsTerminal, Read, Write};
use strata_layers::reference::{normalize_registry, DOCKER_HUB};
use strata_layers::registry::credentials::{auth_key, CredentialStore};
use strata_layers::registry::{RegistryClient, RegistryConfig};

pub fn login(_ctx: &Context, a: LoginArgs) -> anyhow::Result<i32> {
    let server = a.server.as_deref().unwrap_or(DOCKER_HUB);
    let registry = normalize_registry(server);
    if a.password.is_some() && a.password_stdin {
        bail!("--password and --password-stdin are mutually exclusive");
    }
    let mut password = a.password.clone();
    if a.password_stdin {
        if a.username.is_none() {
            bail!("Must provide --username with --password-stdin");
        }
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading the password from stdin")?;
        password = Some(s.trim_end_matches(['\n', '\r']).to_string());
    } else if password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
    }
    let interactive = std::io::stdin().is_terminal();
    let username = match a.username.clone() {
        Some(u) => u,
        None if interactive => prompt("Username: ", false)?,
        None => bail!("Cannot perform an interactive login from a non TTY device"),
    };
    if username.trim().is_empty() {
        bail!("Username is required");
    }
    let password = match password {
        Some(p) => p,
        None if interactive => prompt("Password: ", true)?,
        None => bail!("Cannot perform an interactive login from a non TTY device"),
    };
    if password.is_empty() {
        bail!("Password is required");
    }

    let config = RegistryConfig::load()?;
    let client = RegistryClient::new(config);
    client.check_login(&registry, &username, &password).map_err(|e| exit::with_code(1, Some(e.to_string())))?;
    let store = CredentialStore::from_env()?;
    store.store(&registry, &username, &password)?;
    if !uses_helper(&store) {
        eprintln!(
            "WARNING! Your credentials are stored unencrypted in '{}'.\n\
             Configure a credential helper to remove this warning.",
            store.config_path().display()
        );
        eprintln!();
    }
    println!("Login Succeeded");
    Ok(0)
}

/// True when config.json names a credential helper (no plain-text warning then).
fn uses_helper(store: &CredentialStore) -> bool {
    std::fs::read(store.config_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("credsStore").is_some_and(|s| s.as_str().is_some_and(|s| !s.is_empty())))
}

/// Reads one line from the terminal, without echo for passwords.
fn prompt(question: &str, secret: bool) -> anyhow::Result<String> {
    let mut out = std::io::stdout();
    write!(out, "{question}")?;
    out.flush()?;
    let stdin = std::io::stdin();
    let saved = if secret { rustix::termios::tcgetattr(&stdin).ok() } else { None };
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, t);
        writeln!(out)?;
    }
    read.context("reading from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn logout(_ctx: &Context, a: LogoutArgs) -> anyhow::Result<i32> {
    let server = a.server.as_deref().unwrap_or(DOCKER_HUB);
    // Docker names Docker Hub by its auth key and others by host[:port].
    let shown = auth_key(server);
    let store = CredentialStore::from_env()?;
    let has_entry = std::fs::read(store.config_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("auths").and_then(|a| a.as_object()).cloned())
        .is_some_and(|auths| auths.keys().any(|k| normalize_registry(k) == normalize_registry(server)));
    if !has_entry {
        println!("Not logged in to {shown}");
        return Ok(0);
    }
    println!("Removing login credentials for {shown}");
    store.remove(server)?;
    Ok(0)
}
