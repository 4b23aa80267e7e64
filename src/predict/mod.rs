//! Predict (`diffbragg integrate`) building blocks: spot finding, labelling, matching.
pub mod label;
pub mod matching;
pub mod spotfinder;
