fn main() {
    // Before any thread starts: see the function's doc for why.
    diffbragg::io::hdf5::disable_file_locking_unless_set();
    if let Err(e) = diffbragg::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
