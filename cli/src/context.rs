//! What every command needs: the store root and the identity strata runs as.

use std::path::PathBuf;
use strata_layers::StoreLayout;

pub struct Context {
    pub layout: StoreLayout,
    /// True when strata runs as an ordinary user (rootless mode).
    pub rootless: bool,
}

impl Context {
    pub fn new(root: Option<PathBuf>) -> Self {
        let root = root.unwrap_or_else(StoreLayout::default_root);
        Context { layout: StoreLayout::new(root), rootless: !rustix::process::geteuid().is_root() }
    }
}
