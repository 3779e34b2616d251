//! `embed_migrations!` reads `migrations/` when this crate compiles, but Cargo only knows to
//! compile it again when one of its own sources changes: a migration added since would be left
//! out of the binary until then.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
