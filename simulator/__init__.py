"""A simulated transformer district: virtual meters, buses and PLC router, with faults on demand."""
