// RUN: moec-translate %s --moe-to-cuda -split-input-file -verify-diagnostics > /dev/null

// Every diagnostic of the CUDA training-program printer (and of the model
// FLOPs it reads), each on the smallest IR that reaches it. The complete
// step the cases vary: a parameter "w" with its moments, the four inputs, an
// embedding and the lm-head loss over it, and the six metrics.

// Tests that the printer needs both functions.
// expected-error@+1 {{the module needs @train_step and @init_params; run moe-build-init-params and moe-build-train-step first}}
module {
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
}

// -----

// Tests that the printer emits functions with a body.
// expected-error@+1 {{has 0 blocks; the CUDA printer emits one}}
func.func private @init_params(tensor<i64>) -> tensor<8x4xf32>
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that arguments need static shapes.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{argument #7 has type 'tensor<?x4xf32>'; the CUDA printer needs static tensors (run moe-specialize-shapes)}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}, %x: tensor<?x4xf32>) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that arguments need an element type the printer holds.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{argument #7 has element type 'f16', which the CUDA printer cannot hold}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}, %x: tensor<4xf16>) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that optimizer state is floating-point.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{state argument #7 (x) is 'tensor<4xi64>'; optimizer state must be fp32 or bf16}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}, %x: tensor<4xi64> {moe.parameter = "x"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a parameter and its moments share one type.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{state argument #1 (w) is 'tensor<8x4xbf16>' but the parameter is 'tensor<8x4xf32>'; a parameter and its moments share one type}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xbf16> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that every argument has a place in the program.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{argument #7 is neither a parameter, an optimizer state nor one of input_ids, labels, step, lr}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}, %x: tensor<4xf32> {moe.input = "seed"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the step takes the learning rate.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{@train_step has no 'lr' input}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a parameter comes with both of AdamW's moments.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{parameter 'w' has no exp_avg/exp_avg_sq state}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that only a parameter has a persistent copy.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  // expected-error@+1 {{'arith.truncf' op is marked moe.persistent_copy but does not cast a parameter argument}}
  %c = arith.truncf %m {moe.persistent_copy} : tensor<8x4xf32> to tensor<8x4xbf16>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a parameter has one persistent copy: AdamW writes one.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %c = arith.truncf %w {moe.persistent_copy} : tensor<8x4xf32> to tensor<8x4xbf16>
  // expected-error@+1 {{'arith.truncf' op is a second moe.persistent_copy of parameter 'w'; AdamW updates one copy per parameter}}
  %c2 = arith.truncf %w {moe.persistent_copy} : tensor<8x4xf32> to tensor<8x4xbf16>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer needs a memory plan.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{has no memory plan; run moe-plan-memory before the CUDA printer}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"})  {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that every result has its arena bytes.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  // expected-error@+1 {{'arith.negf' op result #0 has no arena offset; run moe-plan-memory before the CUDA printer}}
  %n = arith.negf %w : tensor<8x4xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that results need static shapes.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  // expected-error@+1 {{'moe.embedding' op result #0 has type 'tensor<?x4x4xf32>'; the CUDA printer needs static tensors (run moe-specialize-shapes)}}
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<?x4x4xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that results need an element type the printer holds.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  // expected-error@+1 {{'arith.truncf' op result #0 is 'tensor<8x4xf16>', which the CUDA printer cannot hold}}
  %t = arith.truncf %w {moe.arena_offsets = array<i64: 0>} : tensor<8x4xf32> to tensor<8x4xf16>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that an op reads only values with a buffer (a splat constant is inlined, not stored).
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %c = arith.constant dense<1.0> : tensor<4xf32>
  // expected-error@+1 {{'moe.rms_norm' op reads a value the CUDA printer has no buffer for (a constant that is not a scalar splat, or an unsupported producer)}}
  %n = moe.rms_norm %c, %c {epsilon = 1.0e-05 : f64, moe.arena_offsets = array<i64: 0>} : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that constants are splats.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  // expected-error@+1 {{'arith.constant' op is not a splat float constant; the CUDA printer inlines only those}}
  %c = arith.constant dense<[1.0, 2.0]> : tensor<2xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a fusion's inputs have its result's element count.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  // expected-error@+1 {{'moe.fusion' op operand #1 has 1 elements but the result has 32; the CUDA printer fuses equal shapes only}}
  %f = moe.fusion(%w, %lr) {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<f32>) -> tensor<8x4xf32> {
  ^bb0(%x: tensor<8x4xf32>, %y: tensor<f32>):
    %n = arith.negf %x : tensor<8x4xf32>
    moe.yield %n : tensor<8x4xf32>
  }
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that rotary positions are 0..S-1.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %q = tensor.expand_shape %e [[0], [1], [2, 3]] output_shape [2, 4, 2, 2] : tensor<2x4x4xf32> into tensor<2x4x2x2xf32>
  // expected-error@+1 {{'moe.rotary' op has explicit positions; the CUDA printer supports positions 0..S-1}}
  %r = moe.rotary %q positions %ids {theta = 1.0e+04 : f64, moe.arena_offsets = array<i64: 256>} : (tensor<2x4x2x2xf32>, tensor<2x4xi64>) -> tensor<2x4x2x2xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the rotary gradient's positions are 0..S-1.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %q = tensor.expand_shape %e [[0], [1], [2, 3]] output_shape [2, 4, 2, 2] : tensor<2x4x4xf32> into tensor<2x4x2x2xf32>
  // expected-error@+1 {{'moe.rotary_grad' op has explicit positions; the CUDA printer supports positions 0..S-1}}
  %r = moe.rotary_grad %q, %ids {theta = 1.0e+04 : f64, moe.arena_offsets = array<i64: 256>} : (tensor<2x4x2x2xf32>, tensor<2x4xi64>) -> tensor<2x4x2x2xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that only attention on cuDNN keeps its stats (fp32 attention runs on the GEMM kernels).
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %q = tensor.expand_shape %e [[0], [1], [2, 3]] output_shape [2, 4, 2, 2] : tensor<2x4x4xf32> into tensor<2x4x2x2xf32>
  // expected-error@+1 {{'moe.attention' op keeps its stats, which only the cuDNN attention kernels write (run moe-save-attention-stats only for bf16 attention on cuDNN)}}
  %o, %lse = moe.attention %q, %q, %q {scale = 0.5 : f64, moe.arena_offsets = array<i64: 256, 512>} : (tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>) -> (tensor<2x4x2x2xf32>, tensor<2x2x4xf32>)
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that linear layers are bias-free.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %b = arith.constant dense<0.0> : tensor<8xf32>
  // expected-error@+1 {{'moe.linear' op has a bias; the CUDA printer emits bias-free linear layers only}}
  %l = moe.linear %e, %w bias %b {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<8xf32>) -> tensor<2x4x8xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the router routes for training.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  // expected-error@+1 {{'moe.router' op routes for evaluation with sinkhorn; the CUDA printer emits training routing only}}
  %g, %x = moe.router %e {k = 2 : i64, load_balancing = #moe.load_balancing<sinkhorn>, training = false, moe.arena_offsets = array<i64: 256, 512>} : (tensor<2x4x4xf32>) -> (tensor<2x4x2xf32>, tensor<2x4x2xi64>)
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a router loss's logits share one shape.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  // expected-error@+1 {{'moe.router_z_loss' op takes logits of types 'tensor<2x4x4xf32>' and 'tensor<8x4xf32>'; the CUDA kernels need one shape}}
  %z = moe.router_z_loss %e, %w {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>) -> tensor<f32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a router loss has logits.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  // expected-error@+1 {{'moe.load_balancing_loss' op takes no logits; the CUDA kernels need one tensor per layer}}
  %a = moe.load_balancing_loss {k = 2 : i64, moe.arena_offsets = array<i64: 0>} : () -> tensor<f32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that expert counts have layers.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  // expected-error@+1 {{'moe.expert_counts' op counts no layers; the CUDA kernel needs one tensor per layer}}
  %c = moe.expert_counts {moe.arena_offsets = array<i64: 0>} : () -> tensor<0x8xi64>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the gradient norm has gradients.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  // expected-error@+1 {{'moe.global_norm' op takes no gradients; the CUDA printer needs at least one}}
  %n = moe.global_norm {moe.arena_offsets = array<i64: 0>} : () -> tensor<f32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the gradient norm reads one element type.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %b = arith.truncf %w {moe.arena_offsets = array<i64: 0>} : tensor<8x4xf32> to tensor<8x4xbf16>
  // expected-error@+1 {{'moe.global_norm' op mixes 'tensor<8x4xbf16>' with 'f32' gradients; the GPU norm reads one element type}}
  %n = moe.global_norm %m, %b {moe.arena_offsets = array<i64: 256>} : (tensor<8x4xf32>, tensor<8x4xbf16>) -> tensor<f32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that ops without a kernel are refused.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  // expected-error@+1 {{'moe.lm_head' op has no CUDA lowering}}
  %l = moe.lm_head %e, %w {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>) -> tensor<2x4x8xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that every update belongs to a group.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %g = arith.negf %w {moe.arena_offsets = array<i64: 0>} : tensor<8x4xf32>
  %norm = moe.global_norm %g {moe.arena_offsets = array<i64: 256>} : (tensor<8x4xf32>) -> tensor<f32>
  // expected-error@+1 {{'moe.adamw' op has no moe.adamw_group; run moe-group-adamw before the CUDA printer}}
  %p0, %m0, %v0 = moe.adamw %w, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<8x4xf32>, tensor<i64>, tensor<f32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a group's updates share hyperparameters.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %g = arith.negf %w {moe.arena_offsets = array<i64: 0>} : tensor<8x4xf32>
  %norm = moe.global_norm %g {moe.arena_offsets = array<i64: 256>} : (tensor<8x4xf32>) -> tensor<f32>
  %p0, %m0, %v0 = moe.adamw %w, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 0 : i64} : tensor<8x4xf32>, tensor<i64>, tensor<f32>
  // expected-error@+1 {{'moe.adamw' op differs from the first moe.adamw of its group in a hyperparameter or a scalar operand; the CUDA printer updates one group in one launch}}
  %p1, %m1, %v1 = moe.adamw %w, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.9 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 0 : i64} : tensor<8x4xf32>, tensor<i64>, tensor<f32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a group's updates share one element type.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %g = arith.negf %w {moe.arena_offsets = array<i64: 0>} : tensor<8x4xf32>
  %norm = moe.global_norm %g {moe.arena_offsets = array<i64: 256>} : (tensor<8x4xf32>) -> tensor<f32>
  %b = arith.truncf %w {moe.arena_offsets = array<i64: 512>} : tensor<8x4xf32> to tensor<8x4xbf16>
  %p0, %m0, %v0 = moe.adamw %w, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 0 : i64} : tensor<8x4xf32>, tensor<i64>, tensor<f32>
  // expected-error@+1 {{'moe.adamw' op updates 'tensor<8x4xbf16>' from 'tensor<8x4xbf16>' but the first moe.adamw of its group 'tensor<8x4xf32>' from 'tensor<8x4xf32>'; one launch updates one element type from one gradient type}}
  %p1, %m1, %v1 = moe.adamw %b, %b, %b, %b, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 0 : i64} : tensor<8x4xbf16>, tensor<i64>, tensor<f32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a group's updates are consecutive.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %g = arith.negf %w {moe.arena_offsets = array<i64: 0>} : tensor<8x4xf32>
  %norm = moe.global_norm %g {moe.arena_offsets = array<i64: 256>} : (tensor<8x4xf32>) -> tensor<f32>
  %p0, %m0, %v0 = moe.adamw %w, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 0 : i64} : tensor<8x4xf32>, tensor<i64>, tensor<f32>
  %n = arith.negf %g {moe.arena_offsets = array<i64: 512>} : tensor<8x4xf32>
  // expected-error@+1 {{'moe.adamw' op is in moe.adamw_group 0 but not next to the group's other updates; the CUDA printer updates a group of consecutive ops in one launch}}
  %p1, %m1, %v1 = moe.adamw %n, %g, %m, %v, %step, %lr, %norm {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64, moe.adamw_group = 0 : i64} : tensor<8x4xf32>, tensor<i64>, tensor<f32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that outputs are in the arena.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  // expected-error@+1 {{'func.return' op returns output 'loss' that is not in the arena}}
  return %lr, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the step returns every metric.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "router_z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  // expected-error@+1 {{'func.return' op has no output named 'z_loss'}}
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that @init_params makes every value with moe.param_init.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = arith.constant dense<0.0> : tensor<8x4xf32>
  // expected-error@+1 {{'func.return' op returns a value not made by moe.param_init}}
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that @init_params creates fp32 values of the parameter's shape.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<4x8xf32> {moe.parameter = "w"}) {
  // expected-error@+1 {{'moe.param_init' op creates 'tensor<4x8xf32>' for 'w' but @train_step takes 'tensor<8x4xf32>'}}
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<4x8xf32>
  return %w : tensor<4x8xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that @init_params initialises every parameter.
// expected-error@+1 {{does not initialise parameter 'w'}}
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "v"}) {
  %w = moe.param_init %seed {name = "v", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the model FLOPs need the lm-head loss.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{'func.func' op has no moe.lm_head_cross_entropy to take the batch and sequence from}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.router_z_loss %h {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the model FLOPs need one attention width.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %q = tensor.expand_shape %e [[0], [1], [2, 3]] output_shape [2, 4, 2, 2] : tensor<2x4x4xf32> into tensor<2x4x2x2xf32>
  %o = moe.attention %q, %q, %q {scale = 0.5 : f64, moe.arena_offsets = array<i64: 256>} : (tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>) -> tensor<2x4x2x2xf32>
  // expected-note@-1 {{the first attention}}
  %l = moe.linear %e, %w {moe.arena_offsets = array<i64: 512>} : (tensor<2x4x4xf32>, tensor<8x4xf32>) -> tensor<2x4x8xf32>
  %q8 = tensor.expand_shape %l [[0], [1], [2, 3]] output_shape [2, 4, 2, 4] : tensor<2x4x8xf32> into tensor<2x4x2x4xf32>
  // expected-error@+1 {{'moe.attention' op has 2 heads of 4 but the first attention 2 of 2; model FLOPs need one width}}
  %o8 = moe.attention %q8, %q8, %q8 {scale = 0.5 : f64, moe.arena_offsets = array<i64: 768>} : (tensor<2x4x2x4xf32>, tensor<2x4x2x4xf32>, tensor<2x4x2x4xf32>) -> tensor<2x4x2x4xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the model FLOPs need attention over the lm-head loss's tokens.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %e = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %f = tensor.collapse_shape %e [[0, 1], [2]] : tensor<2x4x4xf32> into tensor<8x4xf32>
  %q = tensor.expand_shape %f [[0, 1], [2, 3]] output_shape [1, 8, 2, 2] : tensor<8x4xf32> into tensor<1x8x2x2xf32>
  // expected-error@+1 {{'moe.attention' op attends over batch 1 and sequence 8 but the lm-head loss takes 2 and 4}}
  %o = moe.attention %q, %q, %q {scale = 0.5 : f64, moe.arena_offsets = array<i64: 256>} : (tensor<1x8x2x2xf32>, tensor<1x8x2x2xf32>, tensor<1x8x2x2xf32>) -> tensor<1x8x2x2xf32>
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  // expected-note@+1 {{the lm-head loss}}
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer refuses a mesh that is not replica x shard x expert.
// expected-error@+1 {{'shard.grid' op has shape 2, 2; the CUDA printer runs on a static replica x shard x expert mesh}}
shard.grid @mesh(shape = 2x2)
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer refuses a second mesh.
shard.grid @mesh(shape = 1x1x2)
// expected-error@+1 {{'shard.grid' op is a second mesh; the CUDA printer runs a program on one}}
shard.grid @other(shape = 1x2x1)
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer lowers summing all-reduces only.
shard.grid @mesh(shape = 1x1x2)
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  // expected-error@+1 {{'shard.all_reduce' op reduces with max; the CUDA printer lowers sums only}}
  %r = shard.all_reduce %loss on @mesh grid_axes = [0, 1, 2] reduction = max {moe.arena_offsets = array<i64: 768>} : tensor<f32> -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer lowers summing reduce-scatters only.
shard.grid @mesh(shape = 1x2x1)
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  // expected-error@+1 {{'shard.reduce_scatter' op reduces with max; the CUDA printer lowers sums only}}
  %r = shard.reduce_scatter %h on @mesh grid_axes = [1] reduction = max scatter_axis = 0 {moe.arena_offsets = array<i64: 768>} : tensor<2x4x4xf32> -> tensor<1x4x4xf32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer broadcasts scalars only.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %e = tensor.empty() : tensor<2x2x4x4xf32>
  // expected-error@+1 {{'linalg.broadcast' op broadcasts 'tensor<2x4x4xf32>'; the CUDA printer broadcasts scalars only}}
  %b = linalg.broadcast ins(%h : tensor<2x4x4xf32>) outs(%e : tensor<2x2x4x4xf32>) dimensions = [0] {moe.arena_offsets = array<i64: 768>}
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer copies static unit-stride slices only.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  // expected-error@+1 {{'tensor.extract_slice' op is not a static unit-stride slice of 'tensor<2x4x4xf32>' of full rank; the CUDA printer copies only those}}
  %s = tensor.extract_slice %h[0, 0, 0] [1, 2, 4] [1, 2, 1] {moe.arena_offsets = array<i64: 768>} : tensor<2x4x4xf32> to tensor<1x2x4xf32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer refuses a routed op on a grid that is not the
// program's mesh.
shard.grid @mesh(shape = 1x1x2)
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %g, %e = moe.router %h {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>, moe.arena_offsets = array<i64: 768, 800>} : (tensor<2x4x4xf32>) -> (tensor<2x4x2xf32>, tensor<2x4x2xi64>)
  // expected-error@+1 {{'moe.token_shuffle' op runs on grid @other, which is not the program's mesh}}
  %s = moe.token_shuffle %h, %step on @other grid_axes = [2] {seed = 0 : i64, moe.arena_offsets = array<i64: 0>} : (tensor<2x4x4xf32>, tensor<i64>) -> tensor<2x4x4xf32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}


// -----

// Tests that the printer refuses a parameter block on a grid that is not
// the program's mesh.
shard.grid @mesh(shape = 1x2x1)
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  // expected-error@+1 {{'moe.param_init' op creates a block on grid @other, which is not the program's mesh}}
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64, global_shape = array<i64: 16, 4>, grid = @other, split_axes = array<i64: 1, -1>} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}


// -----

// Tests that the printer refuses a routed op whose counts do not match its group.
shard.grid @mesh(shape = 1x1x2)
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %g, %e = moe.router %h {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>, moe.arena_offsets = array<i64: 768, 800>} : (tensor<2x4x4xf32>) -> (tensor<2x4x2xf32>, tensor<2x4x2xi64>)
  // expected-error@+1 {{'moe.dispatch' op runs on a group of 2 ranks but its counts are 'tensor<4x1xi64>'}}
  %r, %re, %c = moe.dispatch %h, %e on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>, moe.arena_offsets = array<i64: 0, 0, 0>} : (tensor<2x4x4xf32>, tensor<2x4x2xi64>) -> (tensor<?x4xf32>, tensor<?x1xi64>, tensor<4x1xi64>)
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer's load-balancing statistics take one logits shape.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %a = moe.linear %h, %w {moe.arena_offsets = array<i64: 768>} : (tensor<2x4x4xf32>, tensor<8x4xf32>) -> tensor<2x4x8xf32>
  %b = tensor.collapse_shape %h [[0, 1], [2]] : tensor<2x4x4xf32> into tensor<8x4xf32>
  // expected-error@+1 {{'moe.load_balancing_stats' op takes logits of types 'tensor<2x4x4xf32>' and 'tensor<8x4xf32>'; the CUDA kernels need one shape}}
  %stats = moe.load_balancing_stats %h, %b {k = 2 : i64, moe.arena_offsets = array<i64: 768>} : (tensor<2x4x4xf32>, tensor<8x4xf32>) -> tensor<2x4xf32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that the printer refuses routing in groups of tokens.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  // expected-error@+1 {{'moe.router' op routes groups of 4 tokens (tokens_per_group); the CUDA kernels route all tokens of the step together}}
  %g, %e = moe.router %h {k = 2 : i64, load_balancing = #moe.load_balancing<sinkhorn>, tokens_per_group = 4 : i64, moe.arena_offsets = array<i64: 768, 800>} : (tensor<2x4x4xf32>) -> (tensor<2x4x2xf32>, tensor<2x4x2xi64>)
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that an offloaded value is in the arena.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64, moe.host_bytes = 256 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  // expected-error@+1 {{'moe.offload' op offloads a value outside the arena; the CUDA printer offloads planned activations}}
  %wh = moe.offload %w layer 0 {moe.host_offsets = array<i64: 0>} : tensor<8x4xf32> -> tensor<8x4xf32, #moe.host>
  %w2 = moe.fetch %wh layer 0 {moe.arena_offsets = array<i64: 768>} : tensor<8x4xf32, #moe.host> -> tensor<8x4xf32>
  %loss = moe.lm_head_cross_entropy %h, %w2, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that an offload has its host offset (moe-plan-memory).
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64, moe.host_bytes = 256 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  // expected-error@+1 {{'moe.offload' op has no moe.host_offsets; run moe-plan-memory before the CUDA printer}}
  %hh = moe.offload %h layer 0 : tensor<2x4x4xf32> -> tensor<2x4x4xf32, #moe.host>
  %h2 = moe.fetch %hh layer 0 {moe.arena_offsets = array<i64: 768>} : tensor<2x4x4xf32, #moe.host> -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h2, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}

// -----

// Tests that a step that offloads has the size of its host region.
func.func @init_params(%seed: tensor<i64> {moe.input = "seed"}) -> (tensor<8x4xf32> {moe.parameter = "w"}) {
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64} : (tensor<i64>) -> tensor<8x4xf32>
  return %w : tensor<8x4xf32>
}
// expected-error@+1 {{offloads activations but has no moe.host_bytes; run moe-plan-memory before the CUDA printer}}
func.func @train_step(%w: tensor<8x4xf32> {moe.parameter = "w"}, %m: tensor<8x4xf32> {moe.exp_avg = "w"}, %v: tensor<8x4xf32> {moe.exp_avg_sq = "w"}, %ids: tensor<2x4xi64> {moe.input = "input_ids"}, %labels: tensor<2x4xi64> {moe.input = "labels"}, %step: tensor<i64> {moe.input = "step"}, %lr: tensor<f32> {moe.input = "lr"}) -> (tensor<f32> {moe.output = "loss"}, tensor<f32> {moe.output = "ce_loss"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}, tensor<f32> {moe.output = "grad_norm"}, tensor<1x8xi64> {moe.output = "expert_counts"}) attributes {moe.arena_bytes = 1024 : i64} {
  %h = moe.embedding %w[%ids] {moe.arena_offsets = array<i64: 0>} : (tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<2x4x4xf32>
  %hh = moe.offload %h layer 0 {moe.host_offsets = array<i64: 0>} : tensor<2x4x4xf32> -> tensor<2x4x4xf32, #moe.host>
  %h2 = moe.fetch %hh layer 0 {moe.arena_offsets = array<i64: 768>} : tensor<2x4x4xf32, #moe.host> -> tensor<2x4x4xf32>
  %loss = moe.lm_head_cross_entropy %h2, %w, %labels {moe.arena_offsets = array<i64: 256>} : (tensor<2x4x4xf32>, tensor<8x4xf32>, tensor<2x4xi64>) -> tensor<f32>
  %zero = arith.constant dense<0.0> : tensor<f32>
  %counts = moe.expert_counts %ids {moe.arena_offsets = array<i64: 512>} : (tensor<2x4xi64>) -> tensor<1x8xi64>
  return %loss, %loss, %zero, %zero, %zero, %counts : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<1x8xi64>
}
