//! Predict (`diffbragg integrate`): spot finding, labelling, matching, the
//! per-shot predictions from stage-1 models, the run driver and its report.
pub mod integrate;
pub mod label;
pub mod matching;
pub mod predictions;
pub mod report;
pub mod spotfinder;
