//! End-to-end tests: the demo cluster (in process, or as the four service binaries where
//! a test needs processes) driven over real gRPC with grpcurl, against fake networks that
//! speak OpenRTB over HTTP and a real redis-server. One test binary: one link of the
//! whole workspace instead of one per file.

mod balancing;
mod cli;
mod decide;
mod decision_log;
mod deploy;
mod edge;
mod faults;
mod hostile;
mod hosts;
mod quickstart;
mod replay;
mod rules;
mod state;
mod support;
mod telemetry;
mod tls;
