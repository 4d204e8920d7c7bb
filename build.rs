//! Lists the dashboard's message catalogs, every `src/dashboard/i18n/<lang>.toml`, for
//! `include_str!` (`$OUT_DIR/catalogs.rs`, included by `src/dashboard/i18n.rs`): adding a
//! language is adding one file. Nothing else happens at build time.

use std::error::Error;
use std::path::Path;

fn main() -> Result<(), Box<dyn Error>> {
    let rel = Path::new("src/dashboard/i18n");
    println!("cargo:rerun-if-changed={}", rel.display());
    let root = std::env::var("CARGO_MANIFEST_DIR")?;
    let dir = Path::new(&root).join(rel);
    let mut langs = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let Some(code) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let valid = !code.is_empty()
            && code.len() <= 12
            && code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            println!(
                "cargo:warning=skipping catalog {}: name it <language code>.toml (lowercase, e.g. hi.toml, pt-br.toml)",
                path.display()
            );
            continue;
        }
        langs.push((code.to_string(), path.display().to_string()));
    }
    langs.sort();
    let mut out = String::from(
        "/// `(language code, catalog TOML)`: every file of `src/dashboard/i18n`, by code.\n\
         pub(crate) static CATALOGS: &[(&str, &str)] = &[\n",
    );
    for (code, path) in &langs {
        out.push_str(&format!("    ({code:?}, include_str!({path:?})),\n"));
    }
    out.push_str("];\n");
    let out_dir = std::env::var("OUT_DIR")?;
    std::fs::write(Path::new(&out_dir).join("catalogs.rs"), out)?;
    Ok(())
}
