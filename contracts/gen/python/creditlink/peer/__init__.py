"""Generated from contracts/proto by `make gen`; do not edit."""
