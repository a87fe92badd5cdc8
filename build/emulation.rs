//! Build support for the host emulation of the CUDA kernels (cargo feature `emulation`).
//!
//! Included by the crate's build.rs as `#[path = "build/emulation.rs"] mod emulation;`.
//!
//! [`compile`] builds the static library `a3d_emulation` (linked into the crate by the `cc`
//! crate's cargo metadata) from
//! - `kernels/emulation/emulator.cpp`: the fiber runtime and kernel registry;
//! - one generated translation unit per kernel source, `kernels/*.cu` plus
//!   `kernels/emulation/selfcheck.cu`, that includes the `.cu` exactly as written and registers
//!   the kernels its X-macro lists: `kernels/fusion.cu` must define `A3D_FUSION_KERNELS(X)`,
//!   `kernels/foo_bar.cu` `A3D_FOO_BAR_KERNELS(X)`, calling `X(name)` for each `extern "C"` kernel.
//!
//! Every unit is compiled by g++ as C++20 with
//! `-x c++ -std=c++20 -O2 -DA3D_HOST_EMULATION -include kernels/emulation/cuda_host_shim.h
//! -isystem <cuda include> -I kernels`. A `.cu` file is its own translation unit, as under nvcc,
//! but all of them are linked into one library: two `.cu` files must not both define a
//! non-`static` function (or differing inline/template functions) of the same name; keep
//! helpers `static` or in an anonymous namespace.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Finds the CUDA include directory (the one holding `cuda_fp16.h`): `$A3D_CUDA_INCLUDE`, then
/// `$CUDA_HOME/include`, then `$CUDA_PATH/include`, then
/// `<repo_root>/.cuda-toolchain/cu13/include` (installed by scripts/install-cuda-toolchain.sh).
pub fn find_cuda_include(repo_root: &Path) -> Option<PathBuf> {
    for var in ["A3D_CUDA_INCLUDE", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let valid = |dir: &Path| dir.join("cuda_fp16.h").is_file();
    if let Some(dir) = env::var_os("A3D_CUDA_INCLUDE").map(PathBuf::from) {
        if valid(&dir) {
            return Some(dir);
        }
        println!(
            "cargo:warning=A3D_CUDA_INCLUDE={} has no cuda_fp16.h; ignoring it",
            dir.display()
        );
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var).map(PathBuf::from) {
            let dir = root.join("include");
            if valid(&dir) {
                return Some(dir);
            }
        }
    }
    let local = repo_root
        .join(".cuda-toolchain")
        .join("cu13")
        .join("include");
    valid(&local).then_some(local)
}

/// One emulated kernel source: `kernels/<stem>.cu` registers through `A3D_<STEM>_KERNELS(X)`.
struct Unit {
    /// Identifier used in `a3d_emu_register_<name>`.
    name: String,
    /// The X-macro the source must define.
    macro_name: String,
    source: PathBuf,
}

fn unit_for(source: &Path) -> Unit {
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_else(|| panic!("kernel source {} has no UTF-8 stem", source.display()));
    let ident: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Unit {
        name: ident.to_ascii_lowercase(),
        macro_name: format!("A3D_{}_KERNELS", ident.to_ascii_uppercase()),
        source: source.to_path_buf(),
    }
}

fn files_with_extension(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| extensions.contains(&e))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn c_string_literal(path: &Path) -> String {
    let mut s = String::from("\"");
    for c in path.to_string_lossy().chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Writes `contents` to `path` unless it already holds exactly that.
fn write_if_changed(path: &Path, contents: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(contents) {
        fs::write(path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// Compiles the emulator and every kernel source into the static library `a3d_emulation`.
///
/// `repo_root` holds `kernels/`; `cuda_include` holds CUDA's `cuda_fp16.h` (see
/// [`find_cuda_include`]); `sources` are the kernel files (build.rs's one list of
/// `kernels/*.cu`). Panics (failing the build) when a source does not compile.
pub fn compile(repo_root: &Path, cuda_include: &Path, sources: &[PathBuf]) {
    let kernels = repo_root.join("kernels");
    let emulation = kernels.join("emulation");
    let shim = emulation.join("cuda_host_shim.h");
    let emulator = emulation.join("emulator.cpp");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let unit_dir = out_dir.join("a3d_emulation_units");
    fs::create_dir_all(&unit_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", unit_dir.display()));

    // Rebuild when any kernel source, header or emulation file changes, or one is added (the
    // directories themselves are watched too).
    println!("cargo:rerun-if-changed={}", kernels.display());
    println!("cargo:rerun-if-changed={}", emulation.display());
    for dir in [&kernels, &emulation] {
        for file in files_with_extension(dir, &["cu", "cuh", "h", "hpp", "cpp"]) {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    println!(
        "cargo:rerun-if-changed={}",
        cuda_include.join("cuda_fp16.h").display()
    );

    let mut units: Vec<Unit> = sources.iter().map(|p| unit_for(p)).collect();
    units.push(unit_for(&emulation.join("selfcheck.cu")));
    for (i, unit) in units.iter().enumerate() {
        if units[..i].iter().any(|u| u.name == unit.name) {
            panic!(
                "two kernel sources map to the emulator unit `{}` ({})",
                unit.name,
                unit.source.display()
            );
        }
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .flag("-x")
        .flag("c++")
        .flag("-std=c++20")
        .opt_level(2)
        // CUDA code reinterprets __half arrays as uint4 and the like: no type-based aliasing.
        .flag("-fno-strict-aliasing")
        .define("A3D_HOST_EMULATION", None)
        .flag("-include")
        .flag(shim.to_str().expect("UTF-8 path to cuda_host_shim.h"))
        .flag("-isystem")
        .flag(cuda_include.to_str().expect("UTF-8 CUDA include path"))
        .include(&kernels)
        .include(&emulation)
        .warnings(true)
        // `#pragma unroll` is nvcc's; g++ ignores it.
        .flag("-Wno-unknown-pragmas");

    let mut unit_list = String::new();
    for unit in &units {
        let _ = write!(unit_list, "X({}) ", unit.name);
        let relative = unit.source.strip_prefix(repo_root).unwrap_or(&unit.source);
        let contents = format!(
            "// Generated by build/emulation.rs: compiles {rel} for the host emulator and registers\n\
             // the kernels listed by its X-macro {mac}(X).\n\
             #include {path}\n\
             #ifndef {mac}\n\
             #error \"{rel} must define {mac}(X), calling X(name) for each of its extern \\\"C\\\" kernels\"\n\
             #endif\n\
             extern \"C\" void a3d_emu_register_{name}(void) {{ {mac}(A3D_EMU_REGISTER) }}\n",
            rel = relative.display(),
            mac = unit.macro_name,
            path = c_string_literal(&unit.source),
            name = unit.name,
        );
        let file = unit_dir.join(format!("unit_{}.cpp", unit.name));
        write_if_changed(&file, &contents);
        build.file(&file);
    }
    build
        .define("A3D_EMU_UNITS(X)", Some(unit_list.trim_end()))
        .file(&emulator)
        .compile("a3d_emulation");
}
