pub mod kinesis;
