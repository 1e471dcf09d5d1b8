//! Pull progress as Docker shows it.
//!
//! Two renderings of the same events ([`PullProgress`]):
//! - on a terminal (stderr is a tty): one live bar per layer on stderr,
//!   `a46fbb00284b: Downloading [=====>      ]  1.2MB/3.4MB`;
//! - otherwise, Docker's non-tty lines on stdout, which scripts and CI logs
//!   rely on: `latest: Pulling from library/busybox`,
//!   `a46fbb00284b: Pulling fs layer`, `a46fbb00284b: Already exists`,
//!   `a46fbb00284b: Pull complete`.
//!
//! Both end with `Digest: sha256:...`, `Status: ...` and the full reference
//! on stdout ([`PullDisplay::finish`]); `-q` prints only the reference.

use crate::format::human_size;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use strata_layers::pull::{PullOutcome, PullProgress};
use strata_layers::reference::Reference;
use strata_layers::Digest;

enum Mode {
    Quiet,
    Lines,
    Bars(MultiProgress),
}

#[derive(Default)]
struct State {
    /// "Already exists" lines held back until a layer is actually fetched:
    /// Docker prints none for an image that is already up to date.
    pending_exists: Vec<Digest>,
    fetching: bool,
    bars: HashMap<Digest, ProgressBar>,
    /// Layers in the order their bars were added.
    order: Vec<Digest>,
}

/// A [`PullProgress`] that renders for a terminal, a pipe, or `-q`.
pub struct PullDisplay {
    mode: Mode,
    state: Mutex<State>,
}

/// Docker's 12-digit short form of a layer digest.
fn short(d: &Digest) -> String {
    d.short()
}

impl PullDisplay {
    /// Chooses the rendering: nothing but the final name for `quiet`, bars
    /// when stderr is a terminal, lines otherwise.
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Mode::Lines
        };
        PullDisplay { mode, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints a line on stdout without tearing the bars.
    fn line(&self, text: &str) {
        let print = || {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        };
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => print(),
            Mode::Bars(m) => m.suspend(print),
        }
    }

    fn status_bar(&self, m: &MultiProgress, d: &Digest, msg: &'static str) -> ProgressBar {
        let style =
            ProgressStyle::with_template("{prefix}: {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
        let pb = m.add(ProgressBar::new(0).with_style(style).with_prefix(short(d)));
        pb.set_message(msg);
        pb
    }

    fn flush_exists(&self, st: &mut State) {
        for d in std::mem::take(&mut st.pending_exists) {
            match &self.mode {
                Mode::Quiet => {}
                Mode::Lines => self.line(&format!("{}: Already exists", short(&d))),
                Mode::Bars(m) => {
                    let pb = self.status_bar(m, &d, "Already exists");
                    pb.finish();
                    st.bars.insert(d, pb);
                    st.order.push(d);
                }
            }
        }
    }

    /// Ends the display: Docker's closing lines (or the name alone for `-q`).
    pub fn finish(&self, outcome: &PullOutcome) {
        {
            let mut st = self.state();
            if outcome.updated {
                self.flush_exists(&mut st);
            }
            if let Mode::Bars(m) = &self.mode {
                // Replace the live bars by their final lines, so that the
                // closing lines below come after them as in Docker's output.
                let _ = m.clear();
                m.set_draw_target(ProgressDrawTarget::hidden());
                for d in &st.order {
                    if let Some(pb) = st.bars.get(d) {
                        eprintln!("{}: {}", short(d), pb.message());
                    }
                }
            }
        }
        if !matches!(self.mode, Mode::Quiet) {
            self.line(&format!("Digest: {}", outcome.digest));
            self.line(&outcome.status_line());
        }
        println!("{}", outcome.reference);
    }

    /// Abandons the bars after a failed pull.
    pub fn abandon(&self) {
        if let Mode::Bars(m) = &self.mode {
            for pb in self.state().bars.values() {
                pb.abandon();
            }
            let _ = m.clear();
        }
    }
}

impl PullProgress for PullDisplay {
    fn resolved(&self, reference: &Reference, _digest: &Digest) {
        let what = match (&reference.digest, &reference.tag) {
            (Some(d), _) => d.to_string(),
            (None, t) => t.clone().unwrap_or_else(|| strata_layers::reference::DEFAULT_TAG.to_string()),
        };
        self.line(&format!("{what}: Pulling from {}", reference.repository));
    }

    fn layer_started(&self, digest: &Digest, size: u64) {
        let mut st = self.state();
        if !st.fetching {
            st.fetching = true;
            self.flush_exists(&mut st);
        }
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => self.line(&format!("{}: Pulling fs layer", short(digest))),
            Mode::Bars(m) => {
                let style = ProgressStyle::with_template("{prefix}: {msg} [{bar:50}] {sizes}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ")
                    .with_key("sizes", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{}/{}", human_size(s.pos()), human_size(s.len().unwrap_or(0)));
                    });
                let pb = m.add(ProgressBar::new(size).with_style(style).with_prefix(short(digest)));
                pb.set_message("Downloading");
                st.bars.insert(*digest, pb);
                st.order.push(*digest);
            }
        }
    }

    fn layer_progress(&self, digest: &Digest, bytes: u64) {
        if let Some(pb) = self.state().bars.get(digest) {
            pb.set_position(bytes);
        }
    }

    fn layer_already_exists(&self, digest: &Digest) {
        self.state().pending_exists.push(*digest);
    }

    fn layer_done(&self, digest: &Digest) {
        self.layer_finished(digest, "Pull complete");
    }

    fn layer_lazy(&self, digest: &Digest) {
        self.layer_finished(digest, "Lazy (files fetched on first use)");
    }
}

impl PullDisplay {
    fn layer_finished(&self, digest: &Digest, status: &str) {
        let st = self.state();
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => self.line(&format!("{}: {status}", short(digest))),
            Mode::Bars(_) => match st.bars.get(digest) {
                Some(pb) => {
                    let style = ProgressStyle::with_template("{prefix}: {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                    pb.set_style(style);
                    pb.finish_with_message(status.to_string());
                }
                None => {
                    drop(st);
                    self.line(&format!("{}: {status}", short(digest)));
                }
            },
        }
    }
}
