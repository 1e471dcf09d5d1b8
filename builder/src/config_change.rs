//! Dockerfile instructions that change only an image's configuration (CMD,
//! ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER,
//! VOLUME, WORKDIR): parsed from one line each, as `commit --change` takes
//! them, and applied in order to a [`ContainerConfig`] with Docker's
//! semantics (shell form through the image's `Shell` or `/bin/sh -c`,
//! ENTRYPOINT clearing an inherited CMD, relative WORKDIRs, variables from
//! the ENV so far).

use std::collections::BTreeMap;

use serde_json::Value;
use strata_layers::image::{ContainerConfig, Healthcheck};

use crate::dockerfile::KEYWORDS;
use crate::words::{env_map, expand_word, split_words, WordError};

/// What `commit --change` accepts (Docker's list).
const CHANGE_INSTRUCTIONS: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("dockerfile parse error on line 1: unknown instruction: {0}")]
    Unknown(String),
    #[error("{0} is not a valid change command")]
    NotAChange(String),
    #[error("{instruction}: {message}")]
    Syntax { instruction: String, message: String },
}

/// One parsed configuration instruction (arguments not yet expanded:
/// variables take their values when the change is applied, from the ENV
/// that precedes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// Upper case: `CMD`, `ENV`, ...
    pub instruction: String,
    /// The rest of the line, trimmed.
    pub args: String,
}

/// Parses one `--change` line such as `CMD ["sh"]` or `ENV A=1 B=2`.
pub fn parse_change(line: &str) -> Result<ConfigChange, ChangeError> {
    let line = line.trim();
    let (word, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let instruction = word.to_ascii_uppercase();
    if !KEYWORDS.contains(&instruction.as_str()) {
        return Err(ChangeError::Unknown(word.to_string()));
    }
    if !CHANGE_INSTRUCTIONS.contains(&instruction.as_str()) {
        return Err(ChangeError::NotAChange(instruction));
    }
    let args = args.trim().to_string();
    if args.is_empty() {
        return Err(syntax(&instruction, format!("{instruction} requires at least one argument")));
    }
    Ok(ConfigChange { instruction, args })
}

fn syntax(instruction: &str, message: impl Into<String>) -> ChangeError {
    ChangeError::Syntax { instruction: instruction.to_string(), message: message.into() }
}

/// Applies `changes` in order, as a Dockerfile's instructions would be.
pub fn apply_changes(config: &mut ContainerConfig, changes: &[ConfigChange]) -> Result<(), ChangeError> {
    let mut applier = Applier::default();
    for c in changes {
        applier.apply(config, c, &BTreeMap::new())?;
    }
    Ok(())
}

/// Applies configuration instructions one after another, remembering what
/// Docker's rules need across them (whether a CMD was set, for ENTRYPOINT).
#[derive(Debug, Default)]
pub struct Applier {
    cmd_set: bool,
}

impl Applier {
    /// Applies `c`; variables expand from `args` (a build's ARGs) overlaid
    /// by the ENV so far, which wins, as in a Dockerfile.
    pub fn apply(
        &mut self,
        config: &mut ContainerConfig,
        c: &ConfigChange,
        args: &BTreeMap<String, String>,
    ) -> Result<(), ChangeError> {
        let mut env = args.clone();
        env.extend(env_map(config.env.as_deref().unwrap_or_default()));
        apply_one(config, c, &mut self.cmd_set, &env)
    }
}

fn apply_one(
    config: &mut ContainerConfig,
    c: &ConfigChange,
    cmd_set: &mut bool,
    env: &BTreeMap<String, String>,
) -> Result<(), ChangeError> {
    let ins = c.instruction.as_str();
    let words = |text: &str| split_words(text, env).map_err(|e: WordError| syntax(ins, e.to_string()));
    let word = |text: &str| expand_word(text, env).map_err(|e: WordError| syntax(ins, e.to_string()));
    match ins {
        "CMD" => {
            config.cmd = Some(command(config, &c.args));
            *cmd_set = true;
        }
        "ENTRYPOINT" => {
            config.entrypoint = Some(command(config, &c.args));
            // An ENTRYPOINT drops the CMD it inherits (one set before it stays).
            if !*cmd_set {
                config.cmd = None;
            }
        }
        "ENV" => {
            let mut list = config.env.take().unwrap_or_default();
            for (k, v) in name_values(ins, &c.args, env)? {
                list.retain(|kv| kv.split_once('=').map_or(kv.as_str(), |(n, _)| n) != k);
                list.push(format!("{k}={v}"));
            }
            config.env = Some(list);
        }
        "LABEL" => {
            let labels = config.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in name_values(ins, &c.args, env)? {
                labels.insert(k, v);
            }
        }
        "EXPOSE" => {
            let ports = config.exposed_ports.get_or_insert_with(BTreeMap::new);
            for w in words(&c.args)? {
                for p in port_specs(&w).ok_or_else(|| syntax(ins, format!("invalid containerPort: {w}")))? {
                    ports.insert(p, Value::Object(Default::default()));
                }
            }
        }
        "VOLUME" => {
            let list = match json_array(&c.args) {
                Some(v) => v,
                None => words(&c.args)?,
            };
            let volumes = config.volumes.get_or_insert_with(BTreeMap::new);
            for v in list {
                if v.trim().is_empty() {
                    return Err(syntax(ins, "VOLUME specified can not be an empty string"));
                }
                volumes.insert(v, Value::Object(Default::default()));
            }
        }
        "USER" => config.user = Some(word(&c.args)?),
        "STOPSIGNAL" => config.stop_signal = Some(word(&c.args)?),
        "WORKDIR" => {
            let dir = word(&c.args)?;
            let base = config.working_dir.as_deref().filter(|d| !d.is_empty()).unwrap_or("/");
            let joined = if dir.starts_with('/') { dir } else { format!("{base}/{dir}") };
            config.working_dir = Some(clean_path(&joined));
        }
        "ONBUILD" => {
            let (inner, _) = c.args.split_once(char::is_whitespace).unwrap_or((&c.args, ""));
            match inner.to_ascii_uppercase().as_str() {
                "ONBUILD" => return Err(syntax(ins, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")),
                "FROM" | "MAINTAINER" => {
                    return Err(syntax(ins, format!("{inner} isn't allowed as an ONBUILD trigger")))
                }
                i if !KEYWORDS.contains(&i) => return Err(ChangeError::Unknown(inner.to_string())),
                _ => {}
            }
            config.on_build.get_or_insert_with(Vec::new).push(c.args.clone());
        }
        "HEALTHCHECK" => config.healthcheck = Some(healthcheck(&c.args)?),
        other => return Err(ChangeError::NotAChange(other.to_string())),
    }
    Ok(())
}

/// A JSON array of strings (the exec form), or `None` for anything else.
fn json_array(args: &str) -> Option<Vec<String>> {
    if !args.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(args).ok()
}

/// CMD/ENTRYPOINT arguments: the exec form as it is, the shell form through
/// the image's shell.
fn command(config: &ContainerConfig, args: &str) -> Vec<String> {
    json_array(args).unwrap_or_else(|| {
        let mut shell = config.shell.clone().unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
        shell.push(args.to_string());
        shell
    })
}

/// `NAME=VALUE ...`, or the old `NAME VALUE WITH SPACES` form.
fn name_values(ins: &str, args: &str, env: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, ChangeError> {
    let err = |e: WordError| syntax(ins, e.to_string());
    // The first word as Docker's parser sees it: quotes kept, and white
    // space inside them part of it (`"my label"=x` is one `name=value`).
    let first = first_raw_word(args);
    if !first.contains('=') {
        let (name, value) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        let value = value.trim();
        if value.is_empty() {
            return Err(syntax(ins, format!("{ins} must have two arguments")));
        }
        return Ok(vec![(name.to_string(), expand_word(value, env).map_err(err)?)]);
    }
    let mut out = Vec::new();
    for w in split_words(args, env).map_err(err)? {
        let Some((k, v)) = w.split_once('=') else {
            return Err(syntax(
                ins,
                format!("Syntax error - can't find = in \"{w}\". Must be of the form: name=value"),
            ));
        };
        if k.is_empty() {
            return Err(syntax(ins, format!("{ins} names can not be blank")));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The text up to the first white space outside quotes (a backslash
/// escapes the next character).
fn first_raw_word(args: &str) -> &str {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in args.char_indices() {
        match (quote, c) {
            _ if escaped => escaped = false,
            (q, '\\') if q != Some('\'') => escaped = true,
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, c) if c.is_whitespace() => return &args[..i],
            _ => {}
        }
    }
    args
}

/// `80`, `80/udp`, `8000-8002/tcp` as Docker's `ExposedPorts` keys.
fn port_specs(spec: &str) -> Option<Vec<String>> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
    let (lo, hi): (u16, u16) = (lo.parse().ok()?, hi.parse().ok()?);
    if lo == 0 || hi < lo {
        return None;
    }
    Some((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [--interval=D ...] CMD ...`.
fn healthcheck(args: &str) -> Result<Healthcheck, ChangeError> {
    let ins = "HEALTHCHECK";
    if args.eq_ignore_ascii_case("none") {
        return Ok(Healthcheck { test: Some(vec!["NONE".into()]), ..Default::default() });
    }
    let mut rest = args;
    let mut check = Healthcheck::default();
    while let Some(flag) = rest.strip_prefix("--") {
        let (flag, after) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
        rest = after.trim_start();
        let (name, value) =
            flag.split_once('=').ok_or_else(|| syntax(ins, format!("missing a value for flag --{flag}")))?;
        let duration =
            || parse_duration(value).ok_or_else(|| syntax(ins, format!("invalid duration {value:?} for --{name}")));
        match name {
            "interval" => check.interval = Some(duration()?),
            "timeout" => check.timeout = Some(duration()?),
            "start-period" => check.start_period = Some(duration()?),
            "start-interval" => check.start_interval = Some(duration()?),
            "retries" => {
                let n: i64 = value.parse().map_err(|_| syntax(ins, format!("invalid --retries {value:?}")))?;
                check.retries = Some(n);
            }
            _ => return Err(syntax(ins, format!("unknown flag: --{name}"))),
        }
    }
    let (word, cmd) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if !word.eq_ignore_ascii_case("cmd") || cmd.trim().is_empty() {
        return Err(syntax(ins, format!("Unknown type {word:?} in HEALTHCHECK (try CMD)")));
    }
    let cmd = cmd.trim();
    check.test = Some(match json_array(cmd) {
        Some(exec) => [vec!["CMD".to_string()], exec].concat(),
        None => vec!["CMD-SHELL".to_string(), cmd.to_string()],
    });
    Ok(check)
}

/// Go's duration syntax as Docker takes it (`30s`, `1m30s`, `500ms`), in nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let value: f64 = num.parse().ok()?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * scale;
        rest = after;
    }
    Some(total as i64)
}

/// `/a/./b/../c/` -> `/a/c`.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(base: ContainerConfig, lines: &[&str]) -> Result<ContainerConfig, ChangeError> {
        let changes: Vec<_> = lines.iter().map(|l| parse_change(l)).collect::<Result<_, _>>()?;
        let mut c = base;
        apply_changes(&mut c, &changes)?;
        Ok(c)
    }

    #[test]
    fn cmd_and_entrypoint_forms() {
        let c = applied(ContainerConfig::default(), &[r#"CMD ["echo", "hi"]"#]).unwrap();
        assert_eq!(c.cmd, Some(vec!["echo".into(), "hi".into()]));
        let c = applied(ContainerConfig::default(), &["cmd echo $HOME"]).unwrap();
        assert_eq!(c.cmd, Some(vec!["/bin/sh".into(), "-c".into(), "echo $HOME".into()]));
        let shell = ContainerConfig { shell: Some(vec!["/bin/bash".into(), "-ec".into()]), ..Default::default() };
        let c = applied(shell, &["ENTRYPOINT run it"]).unwrap();
        assert_eq!(c.entrypoint, Some(vec!["/bin/bash".into(), "-ec".into(), "run it".into()]));
    }

    #[test]
    fn entrypoint_drops_an_inherited_cmd_but_not_one_set_before_it() {
        let base = ContainerConfig { cmd: Some(vec!["sh".into()]), ..Default::default() };
        let c = applied(base.clone(), &[r#"ENTRYPOINT ["x"]"#]).unwrap();
        assert_eq!(c.cmd, None);
        let c = applied(base, &[r#"CMD ["y"]"#, r#"ENTRYPOINT ["x"]"#]).unwrap();
        assert_eq!(c.cmd, Some(vec!["y".into()]));
    }

    #[test]
    fn a_quoted_label_key_may_hold_spaces() {
        let c = applied(ContainerConfig::default(), &[r#"LABEL "my label"="value with spaces" other=x"#]).unwrap();
        let labels = c.labels.unwrap_or_default();
        assert_eq!(labels.get("my label").map(String::as_str), Some("value with spaces"));
        assert_eq!(labels.get("other").map(String::as_str), Some("x"));
        assert_eq!(first_raw_word(r#"'a b'=c d"#), "'a b'=c");
        assert_eq!(first_raw_word(r"a\ b=c d"), r"a\ b=c");
        assert_eq!(first_raw_word("OLD legacy value"), "OLD");
    }

    #[test]
    fn env_label_expose_volume_user_workdir() {
        let base = ContainerConfig {
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            working_dir: Some("/srv".into()),
            ..Default::default()
        };
        let c = applied(
            base,
            &[
                r#"ENV A=2 B="two words" P=$PATH:/x"#,
                "ENV OLD legacy value",
                r#"LABEL org.x="y z" k=v"#,
                "EXPOSE 80 53/udp 8000-8001",
                r#"VOLUME ["/data", "/logs"]"#,
                "VOLUME /cache",
                "USER 1000:1000",
                "WORKDIR app/../web",
                "STOPSIGNAL SIGINT",
            ],
        )
        .unwrap();
        assert_eq!(
            c.env.unwrap(),
            ["PATH=/bin", "A=2", "B=two words", "P=/bin:/x", "OLD=legacy value"].map(String::from)
        );
        let labels = c.labels.unwrap();
        assert_eq!(labels["org.x"], "y z");
        assert_eq!(labels["k"], "v");
        let ports: Vec<_> = c.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        let vols: Vec<_> = c.volumes.unwrap().into_keys().collect();
        assert_eq!(vols, ["/cache", "/data", "/logs"]);
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.working_dir.as_deref(), Some("/srv/web"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    }

    #[test]
    fn healthcheck_and_onbuild() {
        let c = applied(
            ContainerConfig::default(),
            &["HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f http://localhost/", "ONBUILD RUN make"],
        )
        .unwrap();
        let h = c.healthcheck.unwrap();
        assert_eq!(h.interval, Some(90_000_000_000));
        assert_eq!(h.retries, Some(3));
        assert_eq!(h.test, Some(vec!["CMD-SHELL".into(), "curl -f http://localhost/".into()]));
        assert_eq!(c.on_build, Some(vec!["RUN make".into()]));
        let c = applied(ContainerConfig::default(), &["HEALTHCHECK NONE"]).unwrap();
        assert_eq!(c.healthcheck.unwrap().test, Some(vec!["NONE".into()]));
    }

    #[test]
    fn bad_changes_say_what_is_wrong() {
        assert_eq!(parse_change("FOO bar"), Err(ChangeError::Unknown("FOO".into())));
        assert_eq!(parse_change("RUN make"), Err(ChangeError::NotAChange("RUN".into())));
        assert!(matches!(parse_change("CMD"), Err(ChangeError::Syntax { .. })));
        assert!(applied(ContainerConfig::default(), &["ENV A"]).is_err());
        assert!(applied(ContainerConfig::default(), &["ENV A=1 B"]).is_err());
        assert!(applied(ContainerConfig::default(), &["EXPOSE 99999"]).is_err());
        assert!(applied(ContainerConfig::default(), &["EXPOSE 80/foo"]).is_err());
        assert!(applied(ContainerConfig::default(), &["HEALTHCHECK --interval=abc CMD x"]).is_err());
        assert!(applied(ContainerConfig::default(), &["ONBUILD ONBUILD RUN x"]).is_err());
        assert!(applied(ContainerConfig::default(), &[r#"ENV A="unterminated"#]).is_err());
    }
}
