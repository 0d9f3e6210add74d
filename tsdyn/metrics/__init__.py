"""Pure metric functions on tensors: no Lightning, no logging. Layer 0 is the lowest hidden layer."""
