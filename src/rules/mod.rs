//! Rules engine (being written).
