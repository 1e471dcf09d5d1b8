//! The Dockerfile build engine: parses a Dockerfile and runs each step in a
//! container over the union filesystem, committing the upper layer as a new
//! image layer. Not built yet; the crate exists so the workspace shows the
//! intended dependency order (cli -> builder -> runner -> fs -> layers).
