//! `portcullis-verify`: the auditor's offline verifier. See the library docs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = portcullis_verify::run(&args, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
