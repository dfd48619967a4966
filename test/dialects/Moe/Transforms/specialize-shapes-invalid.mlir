// RUN: moec-opt %s --pass-pipeline="builtin.module(func.func(moe-specialize-shapes{batch=0 seq=8}))" -verify-diagnostics

// Tests that an empty batch is refused with both numbers (they printed as
// nothing: the options were streamed, not their values).
// expected-error@+1 {{moe-specialize-shapes needs batch and seq of at least 1, got batch 0 and seq 8}}
func.func @empty(%ids: tensor<?x?xi64> {moe.input = "input_ids"}) {
  return
}
