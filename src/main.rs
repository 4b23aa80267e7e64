fn main() {
    if let Err(e) = diffbragg::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
