//! Evaluating a representation: the weighted kNN monitor.
pub mod knn;
