// RUN: moec-translate %s --moe-to-cuda-init -split-input-file -verify-diagnostics > /dev/null

// Every diagnostic of the CUDA initialisation-program printer.

// Tests that the printer needs @init_params.
// expected-error@+1 {{the module has no @init_params to emit; run moe-build-init-params first}}
module {
}

// -----

// Tests that @init_params has a body.
// expected-error@+1 {{has 0 blocks; the CUDA printer emits one}}
func.func private @init_params(tensor<i64>) -> tensor<4xf32>

// -----

// Tests that every value @init_params returns is made by moe.param_init.
func.func @init_params(%seed: tensor<i64>) -> tensor<4xf32> {
  %w = arith.constant dense<1.0> : tensor<4xf32>
  // expected-error@+1 {{'func.return' op returns a value not made by moe.param_init; the CUDA printer cannot emit it}}
  return %w : tensor<4xf32>
}

// -----

// Tests that the initialisation program creates fp32 parameters.
func.func @init_params(%seed: tensor<i64>) -> tensor<4xbf16> {
  // expected-error@+1 {{'moe.param_init' op creates 'tensor<4xbf16>'; the CUDA printer emits fp32 parameters only}}
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<ones>, std = 0.0 : f64} : (tensor<i64>) -> tensor<4xbf16>
  return %w : tensor<4xbf16>
}

// -----

// Tests that the initialisation program creates whole parameters, not one
// rank's block of a partitioned one.
shard.grid @mesh(shape = 1x2x1)
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  // expected-error@+1 {{'moe.param_init' op creates one rank's block of 'w' (grid, split_axes); the init program creates whole parameters only}}
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64, global_shape = array<i64: 16, 4>, grid = @mesh, split_axes = array<i64: 1, -1>} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
