// RUN: moec-opt %s -split-input-file -verify-diagnostics -moe-hybrid-shard="world-size=2 hybrid-shard-degree=2"

// Tests that a mesh made before must be the one of the options.
// expected-error@+1 {{'shard.grid' op has shape 1x1x1, not the (R, H, P) = (1, 2, 1) of the options}}
shard.grid @mesh(shape = 1x1x1)
func.func @train_step(%p: tensor<4xf32> {moe.parameter = "w"}) -> tensor<4xf32> {
  return %p : tensor<4xf32>
}

// -----

// Tests that every parameter has its own AdamW update.
// expected-error@+1 {{'func.func' op parameter 'w' has no moe.adamw update of its own moments}}
func.func @train_step(%p: tensor<4xf32> {moe.parameter = "w"}) -> tensor<4xf32> {
  return %p : tensor<4xf32>
}

// -----

// Tests that the clipping norm only takes the parameters' gradients.
func.func @train_step(%p: tensor<4xf32> {moe.parameter = "w"},
                      %m: tensor<4xf32> {moe.exp_avg = "w"},
                      %v: tensor<4xf32> {moe.exp_avg_sq = "w"},
                      %g: tensor<4xf32>, %other: tensor<2xf32>,
                      %step: tensor<i64>, %lr: tensor<f32>) -> tensor<4xf32> {
  // expected-error@+1 {{'moe.global_norm' op takes a gradient that no moe.adamw of a parameter updates}}
  %norm = moe.global_norm %g, %other : (tensor<4xf32>, tensor<2xf32>) -> tensor<f32>
  %np, %nm, %nv = moe.adamw %p, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.0 : f64, max_grad_norm = 1.0 : f64} : tensor<4xf32>, tensor<i64>, tensor<f32>
  return %np : tensor<4xf32>
}

// -----

// Tests that a sharded parameter's initial value is its own moe.param_init.
func.func @train_step(%p: tensor<4xf32> {moe.parameter = "w"},
                      %m: tensor<4xf32> {moe.exp_avg = "w"},
                      %v: tensor<4xf32> {moe.exp_avg_sq = "w"},
                      %g: tensor<4xf32>, %step: tensor<i64>,
                      %lr: tensor<f32>, %norm: tensor<f32>) -> tensor<4xf32> {
  %np, %nm, %nv = moe.adamw %p, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.0 : f64, max_grad_norm = 1.0 : f64} : tensor<4xf32>, tensor<i64>, tensor<f32>
  return %np : tensor<4xf32>
}
// expected-error@+1 {{'func.func' op returns parameter 'w' from something other than its own moe.param_init}}
func.func @init_params(%seed: tensor<i64>) -> (tensor<4xf32> {moe.parameter = "w"}) {
  %w = arith.constant dense<1.0> : tensor<4xf32>
  return %w : tensor<4xf32>
}
