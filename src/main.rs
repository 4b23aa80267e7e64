fn main() {
    // Many ranks read the same HDF5 files at once on Lustre/GPFS, where HDF5's
    // file locking fails or serialises; we only ever read images in place or
    // write new files atomically, so locking buys nothing. A user's own
    // setting wins.
    if std::env::var_os("HDF5_USE_FILE_LOCKING").is_none() {
        std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE");
    }
    if let Err(e) = diffbragg::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
