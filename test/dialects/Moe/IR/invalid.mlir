// RUN: moec-opt %s -split-input-file -verify-diagnostics

// Tests that an embedding table must be two-dimensional.
func.func @embedding_table_rank(%t: tensor<4x2x2xf32>, %i: tensor<3xi64>) {
  // expected-error@+1 {{'moe.embedding' op table must have rank 2 ([vocab, hidden]) but has rank 3}}
  %0 = moe.embedding %t[%i] : (tensor<4x2x2xf32>, tensor<3xi64>) -> tensor<3x2xf32>
  return
}

// -----

// Tests that an embedding's result is the indices' shape plus hidden.
func.func @embedding_result(%t: tensor<4x8xf32>, %i: tensor<3xi64>) {
  // expected-error@+1 {{'moe.embedding' op result dimension 1 is 4 but must be 8}}
  %0 = moe.embedding %t[%i] : (tensor<4x8xf32>, tensor<3xi64>) -> tensor<3x4xf32>
  return
}

// -----

// Tests that the norm weight matches the normalised dimension.
func.func @rms_norm_weight(%x: tensor<2x32xf32>, %w: tensor<16xf32>) {
  // expected-error@+1 {{'moe.rms_norm' op weight dimension 0 is 16 but must be 32}}
  %0 = moe.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : (tensor<2x32xf32>, tensor<16xf32>) -> tensor<2x32xf32>
  return
}

// -----

// Tests that epsilon cannot be negative.
func.func @rms_norm_epsilon(%x: tensor<2x32xf32>, %w: tensor<32xf32>) {
  // expected-error@+1 {{'moe.rms_norm' op epsilon must be non-negative but is -1.000000e+00}}
  %0 = moe.rms_norm %x, %w {epsilon = -1.0 : f64} : (tensor<2x32xf32>, tensor<32xf32>) -> tensor<2x32xf32>
  return
}

// -----

// Tests that the norm keeps the element type.
func.func @rms_norm_element_type(%x: tensor<2x32xf32>, %w: tensor<32xf32>) {
  // expected-error@+1 {{'moe.rms_norm' op result element type 'bf16' differs from the input's 'f32'}}
  %0 = moe.rms_norm %x, %w {epsilon = 1.0e-05 : f64} : (tensor<2x32xf32>, tensor<32xf32>) -> tensor<2x32xbf16>
  return
}

// -----

// Tests that rotary embedding needs [batch, seq, heads, head_dim].
func.func @rotary_rank(%x: tensor<2x8x32xf32>) {
  // expected-error@+1 {{'moe.rotary' op input must have rank 4 ([batch, seq, heads, head_dim]) but has rank 3}}
  %0 = moe.rotary %x {theta = 1.0e+04 : f64} : (tensor<2x8x32xf32>) -> tensor<2x8x32xf32>
  return
}

// -----

// Tests that rotary embedding needs an even head dimension.
func.func @rotary_odd_head_dim(%x: tensor<2x8x4x7xf32>) {
  // expected-error@+1 {{'moe.rotary' op head_dim 7 must be even}}
  %0 = moe.rotary %x {theta = 1.0e+04 : f64} : (tensor<2x8x4x7xf32>) -> tensor<2x8x4x7xf32>
  return
}

// -----

// Tests that theta must be positive.
func.func @rotary_theta(%x: tensor<2x8x4x8xf32>) {
  // expected-error@+1 {{'moe.rotary' op theta must be positive but is 0.000000e+00}}
  %0 = moe.rotary %x {theta = 0.0 : f64} : (tensor<2x8x4x8xf32>) -> tensor<2x8x4x8xf32>
  return
}

// -----

// Tests that positions are [batch, seq].
func.func @rotary_positions(%x: tensor<2x8x4x8xf32>, %p: tensor<2x9xi64>) {
  // expected-error@+1 {{'moe.rotary' op positions dimension 1 is 9 but must be 8}}
  %0 = moe.rotary %x positions %p {theta = 1.0e+04 : f64} : (tensor<2x8x4x8xf32>, tensor<2x9xi64>) -> tensor<2x8x4x8xf32>
  return
}

// -----

// Tests that query heads must be a multiple of key/value heads.
func.func @attention_heads(%q: tensor<1x8x6x8xf32>, %k: tensor<1x8x4x8xf32>) {
  // expected-error@+1 {{'moe.attention' op query heads 6 must be a multiple of key/value heads 4}}
  %0 = moe.attention %q, %k, %k {scale = 0.5 : f64} : (tensor<1x8x6x8xf32>, tensor<1x8x4x8xf32>, tensor<1x8x4x8xf32>) -> tensor<1x8x6x8xf32>
  return
}

// -----

// Tests that keys share the queries' head dimension.
func.func @attention_head_dim(%q: tensor<1x8x4x8xf32>, %k: tensor<1x8x2x16xf32>) {
  // expected-error@+1 {{'moe.attention' op key dimension 3 is 16 but must be 8}}
  %0 = moe.attention %q, %k, %k {scale = 0.5 : f64} : (tensor<1x8x4x8xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>) -> tensor<1x8x4x8xf32>
  return
}

// -----

// Tests that values have the keys' shape.
func.func @attention_value(%q: tensor<1x8x4x8xf32>, %k: tensor<1x8x2x8xf32>, %v: tensor<1x8x1x8xf32>) {
  // expected-error@+1 {{'moe.attention' op value dimension 2 is 1 but must be 2}}
  %0 = moe.attention %q, %k, %v {scale = 0.5 : f64} : (tensor<1x8x4x8xf32>, tensor<1x8x2x8xf32>, tensor<1x8x1x8xf32>) -> tensor<1x8x4x8xf32>
  return
}

// -----

// Tests that causal attention needs as many keys as queries.
func.func @attention_causal_lengths(%q: tensor<1x8x4x8xf32>, %k: tensor<1x6x2x8xf32>) {
  // expected-error@+1 {{'moe.attention' op causal attention needs as many keys as queries but has 6 keys and 8 queries}}
  %0 = moe.attention %q, %k, %k {scale = 0.5 : f64} : (tensor<1x8x4x8xf32>, tensor<1x6x2x8xf32>, tensor<1x6x2x8xf32>) -> tensor<1x8x4x8xf32>
  return
}

// -----

// Tests that a sliding window must be positive.
func.func @attention_window(%q: tensor<1x8x4x8xf32>, %k: tensor<1x8x2x8xf32>) {
  // expected-error@+1 {{'moe.attention' op sliding_window must be positive but is 0}}
  %0 = moe.attention %q, %k, %k {scale = 0.5 : f64, sliding_window = 0 : i64} : (tensor<1x8x4x8xf32>, tensor<1x8x2x8xf32>, tensor<1x8x2x8xf32>) -> tensor<1x8x4x8xf32>
  return
}

// -----

// Tests that a sliding window needs causal attention.
func.func @attention_window_causal(%q: tensor<1x8x4x8xf32>, %k: tensor<1x8x2x8xf32>) {
  // expected-error@+1 {{'moe.attention' op sliding_window needs causal attention}}
  %0 = moe.attention %q, %k, %k {causal = false, scale = 0.5 : f64, sliding_window = 4 : i64} : (tensor<1x8x4x8xf32>, tensor<1x8x2x8xf32>, tensor<1x8x2x8xf32>) -> tensor<1x8x4x8xf32>
  return
}

// -----

// Tests that the scale must be positive.
func.func @attention_scale(%q: tensor<1x8x4x8xf32>, %k: tensor<1x8x2x8xf32>) {
  // expected-error@+1 {{'moe.attention' op scale must be positive but is -1.000000e+00}}
  %0 = moe.attention %q, %k, %k {scale = -1.0 : f64} : (tensor<1x8x4x8xf32>, tensor<1x8x2x8xf32>, tensor<1x8x2x8xf32>) -> tensor<1x8x4x8xf32>
  return
}

// -----

// Tests that the attention result has the query's shape.
func.func @attention_result(%q: tensor<1x8x4x8xf32>, %k: tensor<1x8x2x8xf32>) {
  // expected-error@+1 {{'moe.attention' op result dimension 2 is 2 but must be 4}}
  %0 = moe.attention %q, %k, %k {scale = 0.5 : f64} : (tensor<1x8x4x8xf32>, tensor<1x8x2x8xf32>, tensor<1x8x2x8xf32>) -> tensor<1x8x2x8xf32>
  return
}

// -----

// Tests that a linear weight's in_features match the input.
func.func @linear_in_features(%x: tensor<2x32xf32>, %w: tensor<16x8xf32>) {
  // expected-error@+1 {{'moe.linear' op weight dimension 1 is 8 but must be 32}}
  %0 = moe.linear %x, %w : (tensor<2x32xf32>, tensor<16x8xf32>) -> tensor<2x16xf32>
  return
}

// -----

// Tests that a linear bias has out_features elements.
func.func @linear_bias(%x: tensor<2x32xf32>, %w: tensor<16x32xf32>, %b: tensor<32xf32>) {
  // expected-error@+1 {{'moe.linear' op bias dimension 0 is 32 but must be 16}}
  %0 = moe.linear %x, %w bias %b : (tensor<2x32xf32>, tensor<16x32xf32>, tensor<32xf32>) -> tensor<2x16xf32>
  return
}

// -----

// Tests that a linear result has out_features last.
func.func @linear_result(%x: tensor<2x32xf32>, %w: tensor<16x32xf32>) {
  // expected-error@+1 {{'moe.linear' op result dimension 1 is 32 but must be 16}}
  %0 = moe.linear %x, %w : (tensor<2x32xf32>, tensor<16x32xf32>) -> tensor<2x32xf32>
  return
}

// -----

// Tests that k cannot exceed the number of experts.
func.func @router_k(%l: tensor<16x4xf32>) {
  // expected-error@+1 {{'moe.router' op k 5 exceeds the number of experts 4}}
  %g, %e = moe.router %l {k = 5 : i64, load_balancing = #moe.load_balancing<none>} : (tensor<16x4xf32>) -> (tensor<16x5xf32>, tensor<16x5xi64>)
  return
}

// -----

// Tests that k must be positive.
func.func @router_k_positive(%l: tensor<16x4xf32>) {
  // expected-error@+1 {{'moe.router' op attribute 'k' failed to satisfy constraint: 64-bit signless integer attribute whose value is positive}}
  %g, %e = moe.router %l {k = 0 : i64, load_balancing = #moe.load_balancing<none>} : (tensor<16x4xf32>) -> (tensor<16x0xf32>, tensor<16x0xi64>)
  return
}

// -----

// Tests that the router returns k choices per token.
func.func @router_results(%l: tensor<16x4xf32>) {
  // expected-error@+1 {{'moe.router' op experts dimension 1 is 1 but must be 2}}
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<sinkhorn>} : (tensor<16x4xf32>) -> (tensor<16x2xf32>, tensor<16x1xi64>)
  return
}

// -----

// Tests that an unknown load-balancing mode is rejected.
func.func @router_mode(%l: tensor<16x4xf32>) {
  // expected-error@+2 {{expected ::mlir::moe::LoadBalancing to be one of: aux_loss, sinkhorn, balanced, none}}
  // expected-error@+1 {{failed to parse Moe_LoadBalancingAttr parameter 'value'}}
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<greedy>} : (tensor<16x4xf32>) -> (tensor<16x2xf32>, tensor<16x2xi64>)
  return
}

// -----

// Tests that gates and expert choices have one row per token.
func.func @experts_gates(%x: tensor<16x32xf32>, %g: tensor<8x2xf32>, %e: tensor<16x2xi64>, %w1: tensor<4x128x32xf32>, %w2: tensor<4x32x64xf32>) {
  // expected-error@+1 {{'moe.experts' op gates dimension 0 is 8 but must be 16}}
  %0 = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xf32>, tensor<8x2xf32>, tensor<16x2xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  return
}

// -----

// Tests that gates and expert choices agree on k.
func.func @experts_k(%x: tensor<16x32xf32>, %g: tensor<16x2xf32>, %e: tensor<16x1xi64>, %w1: tensor<4x128x32xf32>, %w2: tensor<4x32x64xf32>) {
  // expected-error@+1 {{'moe.experts' op experts dimension 1 is 1 but must be 2}}
  %0 = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x1xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  return
}

// -----

// Tests that the gate/up weight reads the hidden size.
func.func @experts_gate_up_hidden(%x: tensor<16x32xf32>, %g: tensor<16x2xf32>, %e: tensor<16x2xi64>, %w1: tensor<4x128x16xf32>, %w2: tensor<4x32x64xf32>) {
  // expected-error@+1 {{'moe.experts' op gate_up dimension 2 is 16 but must be 32}}
  %0 = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x128x16xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  return
}

// -----

// Tests that the gate/up weight has an even number of rows.
func.func @experts_gate_up_odd(%x: tensor<16x32xf32>, %g: tensor<16x2xf32>, %e: tensor<16x2xi64>, %w1: tensor<4x127x32xf32>, %w2: tensor<4x32x64xf32>) {
  // expected-error@+1 {{'moe.experts' op gate_up dimension 1 is 127 but must be even (gate and up rows)}}
  %0 = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x127x32xf32>, tensor<4x32x64xf32>) -> tensor<16x32xf32>
  return
}

// -----

// Tests that the down weight matches the experts and intermediate size.
func.func @experts_down(%x: tensor<16x32xf32>, %g: tensor<16x2xf32>, %e: tensor<16x2xi64>, %w1: tensor<4x128x32xf32>, %w2: tensor<8x32x64xf32>) {
  // expected-error@+1 {{'moe.experts' op down dimension 0 is 8 but must be 4}}
  %0 = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x128x32xf32>, tensor<8x32x64xf32>) -> tensor<16x32xf32>
  return
}

// -----

// Tests that the down weight's intermediate size is half the gate/up rows.
func.func @experts_down_inter(%x: tensor<16x32xf32>, %g: tensor<16x2xf32>, %e: tensor<16x2xi64>, %w1: tensor<4x128x32xf32>, %w2: tensor<4x32x128xf32>) {
  // expected-error@+1 {{'moe.experts' op down dimension 2 is 128 but must be 64}}
  %0 = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<interleaved>} : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x128x32xf32>, tensor<4x32x128xf32>) -> tensor<16x32xf32>
  return
}

// -----

// Tests that the experts' result has the input's shape.
func.func @experts_result(%x: tensor<16x32xf32>, %g: tensor<16x2xf32>, %e: tensor<16x2xi64>, %w1: tensor<4x128x32xf32>, %w2: tensor<4x32x64xf32>) {
  // expected-error@+1 {{'moe.experts' op result dimension 0 is 8 but must be 16}}
  %0 = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> tensor<8x32xf32>
  return
}

// -----

// Tests that the lm-head weight's hidden size matches the input.
func.func @lm_head_weight(%x: tensor<2x32xf32>, %w: tensor<256x16xf32>) {
  // expected-error@+1 {{'moe.lm_head' op weight dimension 1 is 16 but must be 32}}
  %0 = moe.lm_head %x, %w : (tensor<2x32xf32>, tensor<256x16xf32>) -> tensor<2x256xf32>
  return
}

// -----

// Tests that the lm-head result has vocabulary logits.
func.func @lm_head_result(%x: tensor<2x32xf32>, %w: tensor<256x32xf32>) {
  // expected-error@+1 {{'moe.lm_head' op result dimension 1 is 128 but must be 256}}
  %0 = moe.lm_head %x, %w : (tensor<2x32xf32>, tensor<256x32xf32>) -> tensor<2x128xf32>
  return
}

// -----

// Tests that a parameter shard must lie inside the parameter.
func.func @param_init_shard(%seed: tensor<i64>) {
  // expected-error@+1 {{'moe.param_init' op shard [6, 10) of dimension 0 is outside the parameter's 8}}
  %0 = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>, std = 0.02 : f64, global_shape = array<i64: 8, 4>, offsets = array<i64: 6, 0>} : (tensor<i64>) -> tensor<4x4xf32>
  return
}

// -----

// Tests that normal initialisation needs a positive std.
func.func @param_init_std(%seed: tensor<i64>) {
  // expected-error@+1 {{'moe.param_init' op std must be positive for normal initialisation but is 0.000000e+00}}
  %0 = moe.param_init %seed {name = "w", kind = #moe.param_init<normal>} : (tensor<i64>) -> tensor<4x4xf32>
  return
}

// -----

// Tests that a parameter has a static shape.
func.func @param_init_dynamic(%seed: tensor<i64>) {
  // expected-error@+1 {{'moe.param_init' op result must have a static shape but has type 'tensor<?x4xf32>'}}
  %0 = moe.param_init %seed {name = "w", kind = #moe.param_init<ones>} : (tensor<i64>) -> tensor<?x4xf32>
  return
}

// -----

// Tests that expert counts have one row per layer.
func.func @expert_counts_rows(%e0: tensor<16x2xi64>, %e1: tensor<16x2xi64>) {
  // expected-error@+1 {{'moe.expert_counts' op counts have 3 rows but there are 2 layers}}
  %0 = moe.expert_counts %e0, %e1 : (tensor<16x2xi64>, tensor<16x2xi64>) -> tensor<3x4xi64>
  return
}

// -----

// Tests that AdamW's moments have the parameter's type.
func.func @adamw_moments(%p: tensor<4x8xf32>, %g: tensor<4x8xf32>, %m: tensor<4x8xf32>, %v: tensor<8x4xf32>, %step: tensor<i64>, %lr: tensor<f32>) {
  // expected-error@+1 {{'moe.adamw' op failed to verify that all of {param, exp_avg, exp_avg_sq, new_param, new_exp_avg, new_exp_avg_sq} have same type}}
  %0:3 = "moe.adamw"(%p, %g, %m, %v, %step, %lr, %lr) {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<8x4xf32>, tensor<i64>, tensor<f32>, tensor<f32>) -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>)
  return
}

// -----

// Tests that AdamW's gradient has the parameter's shape.
func.func @adamw_grad_shape(%p: tensor<4x8xf32>, %g: tensor<8x4xf32>, %step: tensor<i64>, %lr: tensor<f32>) {
  // expected-error@+1 {{'moe.adamw' op gradient 'tensor<8x4xf32>' must have the shape of the parameter 'tensor<4x8xf32>'}}
  %0:3 = moe.adamw %p, %g, %p, %p, %step, %lr, %lr {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<4x8xf32> grad tensor<8x4xf32>, tensor<i64>, tensor<f32>
  return
}

// -----

// Tests that AdamW's gradient is bf16 only under an fp32 parameter (and
// never wider than the parameter).
func.func @adamw_grad_type(%p: tensor<4x8xbf16>, %g: tensor<4x8xf32>, %step: tensor<i64>, %lr: tensor<f32>) {
  // expected-error@+1 {{'moe.adamw' op gradient 'tensor<4x8xf32>' must have the parameter's element type, or be bf16 under an fp32 parameter, but the parameter is 'tensor<4x8xbf16>'}}
  %0:3 = moe.adamw %p, %g, %p, %p, %step, %lr, %lr {beta1 = 0.9 : f64, beta2 = 0.95 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.1 : f64, max_grad_norm = 1.0 : f64} : tensor<4x8xbf16> grad tensor<4x8xf32>, tensor<i64>, tensor<f32>
  return
}

// -----

// Tests that a gradient has the type of what it is the gradient of.
func.func @linear_grad_types(%x: tensor<2x8xf32>, %w: tensor<4x8xf32>, %dy: tensor<2x4xf32>) {
  // expected-error@+1 {{'moe.linear_grad' op failed to verify that all of {input, d_input} have same type}}
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<2x8xf32>, tensor<4x8xf32>, tensor<2x4xf32>) -> (tensor<2x4xf32>, tensor<4x8xf32>)
  return
}

// -----

// Tests that the fused loss returns an fp32 scalar.
func.func @cross_entropy_result(%h: tensor<2x8x16xf32>, %w: tensor<64x16xf32>, %labels: tensor<2x8xi64>) {
  // expected-error@+1 {{'moe.lm_head_cross_entropy' op result #0 must be 0D tensor of 32-bit float values, but got 'tensor<2x8xf32>'}}
  %0 = moe.lm_head_cross_entropy %h, %w, %labels : (tensor<2x8x16xf32>, tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8xf32>
  return
}

// -----

// A weight gradient may be wider than the weight, but never of another shape.
func.func @linear_grad_weight_shape(%x: tensor<2x8xbf16>, %w: tensor<4x8xbf16>, %dy: tensor<2x4xbf16>) {
  // expected-error@+1 {{'moe.linear_grad' op failed to verify that all of {weight, d_weight} have same shape}}
  %dx, %dw = moe.linear_grad %x, %w, %dy : (tensor<2x8xbf16>, tensor<4x8xbf16>, tensor<2x4xbf16>) -> (tensor<2x8xbf16>, tensor<8x4xf32>)
  return
}

// -----

// The fused loss-and-gradient op keeps the gradient op's type rules.
func.func @lm_head_ce_with_grad_input(%h: tensor<2x8x16xbf16>, %w: tensor<64x16xbf16>, %labels: tensor<2x8xi64>) {
  // expected-error@+1 {{'moe.lm_head_cross_entropy_with_grad' op failed to verify that all of {input, d_input} have same type}}
  %l, %dh, %dw = moe.lm_head_cross_entropy_with_grad %h, %w, %labels {scale = 1.0 : f64} : (tensor<2x8x16xbf16>, tensor<64x16xbf16>, tensor<2x8xi64>) -> (tensor<f32>, tensor<2x8x16xf32>, tensor<64x16xf32>)
  return
}

// -----

// The experts' saved projections have one row per (token, choice) pair.
func.func @experts_saved_rows(%x: tensor<16x32xf32>, %g: tensor<16x2xf32>, %e: tensor<16x2xi64>, %w1: tensor<4x128x32xf32>, %w2: tensor<4x32x64xf32>) {
  // expected-error@+1 {{'moe.experts' op saved dimension 0 is 16 but must be 32}}
  %y, %s = moe.experts %x, %g, %e, %w1, %w2 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<16x32xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x128x32xf32>, tensor<4x32x64xf32>) -> (tensor<16x32xf32>, tensor<16x128xf32>)
  return
}

// -----

// A fusion's body holds element-wise arith ops only.
func.func @fusion_not_elementwise(%a: tensor<4x8xf32>, %w: tensor<8x8xf32>) -> tensor<4x8xf32> {
  %0 = moe.fusion(%a, %w) : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32> {
  ^bb0(%x: tensor<4x8xf32>, %y: tensor<8x8xf32>):
    // expected-error@+1 {{'moe.linear' op cannot be fused: a moe.fusion body holds element-wise arith ops and splat constants only}}
    %1 = moe.linear %x, %y : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
    moe.yield %1 : tensor<4x8xf32>
  }
  return %0 : tensor<4x8xf32>
}

// -----

// Every value in the body has the result's element count.
func.func @fusion_elements(%a: tensor<4x8xf32>, %b: tensor<8xf32>) -> tensor<4x8xf32> {
  %0 = moe.fusion(%a, %b) : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32> {
  ^bb0(%x: tensor<4x8xf32>, %y: tensor<8xf32>):
    // expected-error@+1 {{'arith.negf' op has 8 elements but the fusion's result has 32}}
    %1 = arith.negf %y : tensor<8xf32>
    %2 = arith.negf %x : tensor<4x8xf32>
    moe.yield %2 : tensor<4x8xf32>
  }
  return %0 : tensor<4x8xf32>
}

// -----

// The body's arguments are the inputs, one for one.
func.func @fusion_arguments(%a: tensor<8xf32>, %b: tensor<8xf32>) -> tensor<8xf32> {
  // expected-error@+1 {{'moe.fusion' op input #1 is 'tensor<8xf32>' but body argument #1 is 'tensor<8xbf16>'}}
  %0 = moe.fusion(%a, %b) : (tensor<8xf32>, tensor<8xf32>) -> tensor<8xf32> {
  ^bb0(%x: tensor<8xf32>, %y: tensor<8xbf16>):
    %1 = arith.negf %x : tensor<8xf32>
    moe.yield %1 : tensor<8xf32>
  }
  return %0 : tensor<8xf32>
}

// -----

// It yields its result's type.
func.func @fusion_yield(%a: tensor<8xf32>) -> tensor<8xbf16> {
  // expected-error@+1 {{'moe.fusion' op yields 'tensor<8xf32>' but its result is 'tensor<8xbf16>'}}
  %0 = moe.fusion(%a) : (tensor<8xf32>) -> tensor<8xbf16> {
  ^bb0(%x: tensor<8xf32>):
    %1 = arith.negf %x : tensor<8xf32>
    moe.yield %1 : tensor<8xf32>
  }
  return %0 : tensor<8xbf16>
}

// -----

// Attention's stats are [batch, q_heads, seq].
func.func @attention_stats_shape(%q: tensor<2x8x4x16xbf16>, %k: tensor<2x8x2x16xbf16>, %v: tensor<2x8x2x16xbf16>) {
  // expected-error@+1 {{'moe.attention' op stats dimension 1 is 8 but must be 4}}
  %o, %lse = moe.attention %q, %k, %v {scale = 0.25 : f64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>) -> (tensor<2x8x4x16xbf16>, tensor<2x8x4xf32>)
  return
}

// -----

// ... and fp32.
func.func @attention_stats_type(%q: tensor<2x8x4x16xbf16>, %k: tensor<2x8x2x16xbf16>, %v: tensor<2x8x2x16xbf16>) {
  // expected-error@+1 {{'moe.attention' op stats must be fp32 but are 'bf16'}}
  %o, %lse = moe.attention %q, %k, %v {scale = 0.25 : f64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>) -> (tensor<2x8x4x16xbf16>, tensor<2x4x8xbf16>)
  return
}

// -----

// The gradient's saved values are the forward's result and stats, both.
func.func @attention_grad_saved(%q: tensor<2x8x4x16xbf16>, %k: tensor<2x8x2x16xbf16>, %v: tensor<2x8x2x16xbf16>, %do: tensor<2x8x4x16xbf16>) {
  // expected-error@+1 {{'moe.attention_grad' op saved must be the forward's result and stats (2 values) but has 1}}
  %dq, %dk, %dv = moe.attention_grad %q, %k, %v, %do, %do {scale = 0.25 : f64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>) -> (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>)
  return
}

// -----

// Tests that the norm weight of moe.add_rms_norm matches the normalised
// dimension.
func.func @add_rms_norm_weight(%h: tensor<2x32xf32>, %w: tensor<16xf32>) {
  // expected-error@+1 {{'moe.add_rms_norm' op weight dimension 0 is 16 but must be 32}}
  %s, %y = moe.add_rms_norm %h, %h, %w {epsilon = 1.0e-05 : f64} : (tensor<2x32xf32>, tensor<2x32xf32>, tensor<16xf32>) -> (tensor<2x32xf32>, tensor<2x32xf32>)
  return
}

// -----

// Tests that moe.add_rms_norm's epsilon cannot be negative.
func.func @add_rms_norm_epsilon(%h: tensor<2x32xf32>, %w: tensor<32xf32>) {
  // expected-error@+1 {{'moe.add_rms_norm' op epsilon must be non-negative but is -1.000000e+00}}
  %s, %y = moe.add_rms_norm %h, %h, %w {epsilon = -1.0 : f64} : (tensor<2x32xf32>, tensor<2x32xf32>, tensor<32xf32>) -> (tensor<2x32xf32>, tensor<2x32xf32>)
  return
}

// -----

// Tests that moe.add_rms_norm normalises at least one dimension.
func.func @add_rms_norm_rank(%h: tensor<f32>, %w: tensor<1xf32>) {
  // expected-error@+1 {{'moe.add_rms_norm' op sum must have rank at least 1}}
  %s, %y = moe.add_rms_norm %h, %h, %w {epsilon = 1.0e-05 : f64} : (tensor<f32>, tensor<f32>, tensor<1xf32>) -> (tensor<f32>, tensor<f32>)
  return
}

// -----

// Tests that a parameter's name is a non-empty string.
// expected-error@+1 {{'func.func' op has 'moe.parameter' on argument #0 that is ""; it must be a non-empty string}}
func.func @parameter_empty(%w: tensor<4xf32> {moe.parameter = ""}) {
  return
}

// -----

// Tests that a parameter's name is a string.
// expected-error@+1 {{'func.func' op has 'moe.parameter' on result #0 that is 3 : i64; it must be a non-empty string}}
func.func @parameter_type(%w: tensor<4xf32>) -> (tensor<4xf32> {moe.parameter = 3}) {
  return %w : tensor<4xf32>
}

// -----

// Tests that a parameter is a function's argument or result, not an op's.
func.func @parameter_on_op(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.parameter' on the op; it belongs on a function argument or result}}
  %n = arith.negf %w {moe.parameter = "w"} : tensor<4xf32>
  return
}

// -----

// Tests that an input is a function argument.
// expected-error@+1 {{'func.func' op has 'moe.input' on result #0; it belongs on a function argument}}
func.func @input_on_result(%x: tensor<4xi64>) -> (tensor<4xi64> {moe.input = "input_ids"}) {
  return %x : tensor<4xi64>
}

// -----

// Tests that an output is a function result.
// expected-error@+1 {{'func.func' op has 'moe.output' on argument #0; it belongs on a function result}}
func.func @output_on_argument(%x: tensor<f32> {moe.output = "loss"}) {
  return
}

// -----

// Tests that a gradient is a function result.
// expected-error@+1 {{'func.func' op has 'moe.gradient' on argument #1; it belongs on a function result}}
func.func @gradient_on_argument(%w: tensor<4xf32> {moe.parameter = "w"}, %g: tensor<4xf32> {moe.gradient = "w"}) {
  return
}

// -----

// Tests that an AdamW moment names its parameter.
// expected-error@+1 {{'func.func' op has 'moe.exp_avg_sq' on argument #0 that is unit; it must be a non-empty string}}
func.func @moment_unit(%v: tensor<4xf32> {moe.exp_avg_sq}) {
  return
}

// -----

// Tests that only what the dialect defines may be spelled moe.*.
// expected-error@+1 {{'func.func' op has 'moe.weight' on argument #0, which the moe dialect does not define}}
func.func @unknown_argument_attr(%w: tensor<4xf32> {moe.weight = "w"}) {
  return
}

// -----

// Tests that an unknown moe.* op attribute is an error.
func.func @unknown_op_attr(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.fused', which the moe dialect does not define}}
  %n = arith.negf %w {moe.fused} : tensor<4xf32>
  return
}

// -----

// Tests that moe.persistent_copy marks a cast.
func.func @persistent_copy_op(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.persistent_copy' = unit; it is a unit attribute of arith.truncf}}
  %n = arith.negf %w {moe.persistent_copy} : tensor<4xf32>
  return
}

// -----

// Tests that moe.arena_offsets has one entry per result.
func.func @arena_offsets_count(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 2 'moe.arena_offsets' for 1 results; it needs one per result}}
  %n = arith.negf %w {moe.arena_offsets = array<i64: 0, 256>} : tensor<4xf32>
  return
}

// -----

// Tests that an arena offset is -1 or a byte offset.
func.func @arena_offsets_negative(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.arena_offsets' -2 for result #0; an offset is at least 0, or -1 for a result outside the arena}}
  %n = arith.negf %w {moe.arena_offsets = array<i64: -2>} : tensor<4xf32>
  return
}

// -----

// Tests that moe.arena_offsets is an array<i64>.
func.func @arena_offsets_type(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.arena_offsets' = [0]; it must be an array<i64>}}
  %n = arith.negf %w {moe.arena_offsets = [0]} : tensor<4xf32>
  return
}

// -----

// Tests that an arena's size is an i64 on a function.
// expected-error@+1 {{'func.func' op has 'moe.arena_bytes' = -1 : i64; it is an i64 of at least 0 on a function}}
func.func @arena_bytes_negative() attributes {moe.arena_bytes = -1 : i64} {
  return
}

// -----

// Tests that the live-bytes bound belongs on a function.
// expected-error@+1 {{'builtin.module' op has 'moe.arena_live_bytes' = 0 : i64; it is an i64 of at least 0 on a function}}
module attributes {moe.arena_live_bytes = 0 : i64} {
}

// -----

// Tests that moe.adamw_group is a group id on moe.adamw.
func.func @adamw_group_op(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.adamw_group' = 0 : i64; it is an i64 of at least 0 on moe.adamw}}
  %n = arith.negf %w {moe.adamw_group = 0 : i64} : tensor<4xf32>
  return
}

// -----

// Tests that the imported opset is an i64 on the module.
// expected-error@+1 {{'builtin.module' op has 'moe.onnx.opset' = "18"; it is an i64 on an imported module}}
module attributes {moe.onnx.opset = "18"} {
}

// -----

// Tests that a dispatch's experts choose for every token of its input.
func.func @dispatch_experts(%x: tensor<16x32xf32>, %e: tensor<8x2xi64>) {
  // expected-error@+1 {{'moe.dispatch' op experts dimension 0 is 8 but must be 16}}
  %r, %re, %c = moe.dispatch %x, %e on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<16x32xf32>, tensor<8x2xi64>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>)
  return
}

// -----

// Tests that received rows keep the hidden size.
func.func @dispatch_rows(%x: tensor<16x32xf32>, %e: tensor<16x2xi64>) {
  // expected-error@+1 {{'moe.dispatch' op rows dimension 1 is 16 but must be 32}}
  %r, %re, %c = moe.dispatch %x, %e on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<16x32xf32>, tensor<16x2xi64>) -> (tensor<?x16xf32>, tensor<?x1xi64>, tensor<2x2xi64>)
  return
}

// -----

// Tests that gates and row gates come together.
func.func @dispatch_row_gates(%x: tensor<16x32xf32>, %e: tensor<16x2xi64>) {
  // expected-error@+1 {{'moe.dispatch' op has a row_gates result but no gates}}
  %r, %re, %c, %g = moe.dispatch %x, %e on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<16x32xf32>, tensor<16x2xi64>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>, tensor<?x1xf32>)
  return
}

// -----

// Tests that the per-(rank, local expert) counts have a static shape.
func.func @dispatch_counts(%x: tensor<16x32xf32>, %e: tensor<16x2xi64>) {
  // expected-error@+1 {{'moe.dispatch' op counts must be a static [group_size, num_local_experts] tensor but are 'tensor<?x2xi64>'}}
  %r, %re, %c = moe.dispatch %x, %e on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<16x32xf32>, tensor<16x2xi64>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<?x2xi64>)
  return
}

// -----

// Tests that a routed collective names each grid axis once.
func.func @dispatch_axes(%x: tensor<16x32xf32>, %e: tensor<16x2xi64>) {
  // expected-error@+1 {{'moe.dispatch' op grid axis 2 appears twice}}
  %r, %re, %c = moe.dispatch %x, %e on @mesh grid_axes = [2, 2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<16x32xf32>, tensor<16x2xi64>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>)
  return
}

// -----

// Tests that a combine returns one row per token of its experts.
func.func @combine_result(%r: tensor<?x32xf32>, %e: tensor<16x2xi64>, %c: tensor<2x2xi64>) {
  // expected-error@+1 {{'moe.combine' op result dimension 0 is 8 but must be 16}}
  %y = moe.combine %r, %e, %c on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<?x32xf32>, tensor<16x2xi64>, tensor<2x2xi64>) -> tensor<8x32xf32>
  return
}

// -----

// Tests that a token shuffle keeps its input's type.
func.func @token_shuffle_type(%x: tensor<16x32xf32>, %s: tensor<i64>) {
  // expected-error@+1 {{'moe.token_shuffle' op result type 'tensor<16x16xf32>' differs from the input's 'tensor<16x32xf32>'}}
  %y = moe.token_shuffle %x, %s on @mesh grid_axes = [2] {seed = 0 : i64} : (tensor<16x32xf32>, tensor<i64>) -> tensor<16x16xf32>
  return
}

// -----

// Tests that load-balancing statistics are [2, num_experts].
func.func @load_balancing_stats_shape(%l: tensor<16x4xf32>) {
  // expected-error@+1 {{'moe.load_balancing_stats' op stats dimension 1 is 8 but must be 4}}
  %s = moe.load_balancing_stats %l {k = 2 : i64} : (tensor<16x4xf32>) -> tensor<2x8xf32>
  return
}

// -----

// Sinkhorn routes runs of tokens_per_group tokens: they must tile the tokens.
func.func @router_groups(%l: tensor<2x5x4xf32>) {
  // expected-error@+1 {{'moe.router' op tokens_per_group 4 does not divide the 10 tokens of the logits}}
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<sinkhorn>, tokens_per_group = 4 : i64} : (tensor<2x5x4xf32>) -> (tensor<2x5x2xf32>, tensor<2x5x2xi64>)
  return
}

// -----

// A rank's block needs both the grid and the axes that split it.
func.func @param_init_split_without_grid(%seed: tensor<i64>) {
  // expected-error@+1 {{'moe.param_init' op grid and split_axes come together}}
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<ones>, global_shape = array<i64: 8>, split_axes = array<i64: 1>} : (tensor<i64>) -> tensor<4xf32>
  return
}

// -----

// One split axis per dimension.
func.func @param_init_split_rank(%seed: tensor<i64>) {
  // expected-error@+1 {{'moe.param_init' op split_axes must have rank 2}}
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<ones>, global_shape = array<i64: 8, 4>, grid = @mesh, split_axes = array<i64: 1>} : (tensor<i64>) -> tensor<4x4xf32>
  return
}

// -----

// A split axis is a grid axis or -1.
func.func @param_init_split_axis(%seed: tensor<i64>) {
  // expected-error@+1 {{'moe.param_init' op split_axes entry -2 of dimension 0 is neither a grid axis nor -1}}
  %w = moe.param_init %seed {name = "w", kind = #moe.param_init<ones>, global_shape = array<i64: 8>, grid = @mesh, split_axes = array<i64: -2>} : (tensor<i64>) -> tensor<4xf32>
  return
}

// -----

// Tests that gates and row gates come together (gates without row gates).
func.func @dispatch_gates_without_row_gates(%x: tensor<16x32xf32>, %e: tensor<16x2xi64>, %g: tensor<16x2xf32>) {
  // expected-error@+1 {{'moe.dispatch' op has gates but no row_gates result}}
  %r, %re, %c = moe.dispatch %x, %e gates(%g) on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<16x32xf32>, tensor<16x2xi64>, tensor<16x2xf32>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>)
  return
}

// -----

// Tests that a routed collective names at least one grid axis.
func.func @dispatch_no_axes(%x: tensor<16x32xf32>, %e: tensor<16x2xi64>) {
  // expected-error@+1 {{'moe.dispatch' op grid_axes must name at least one axis}}
  %r, %re, %c = moe.dispatch %x, %e on @mesh grid_axes = [] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<16x32xf32>, tensor<16x2xi64>) -> (tensor<?x32xf32>, tensor<?x1xi64>, tensor<2x2xi64>)
  return
}

// -----

// Tests that grid axes are not negative.
func.func @combine_negative_axis(%r: tensor<?x32xf32>, %e: tensor<16x2xi64>, %c: tensor<2x2xi64>) {
  // expected-error@+1 {{'moe.combine' op grid axis -1 is negative}}
  %y = moe.combine %r, %e, %c on @mesh grid_axes = [-1] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<?x32xf32>, tensor<16x2xi64>, tensor<2x2xi64>) -> tensor<16x32xf32>
  return
}

// -----

// Tests that combined rows are a matrix.
func.func @combine_rows_rank(%r: tensor<?x4x8xf32>, %e: tensor<16x2xi64>, %c: tensor<2x2xi64>) {
  // expected-error@+1 {{'moe.combine' op rows must be [rows, width] but have rank 3}}
  %y = moe.combine %r, %e, %c on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<?x4x8xf32>, tensor<16x2xi64>, tensor<2x2xi64>) -> tensor<16x32xf32>
  return
}

// -----

// Tests that a combine's counts have a static shape.
func.func @combine_counts(%r: tensor<?x32xf32>, %e: tensor<16x2xi64>, %c: tensor<?x2xi64>) {
  // expected-error@+1 {{'moe.combine' op counts must be a static [group_size, num_local_experts] tensor but are 'tensor<?x2xi64>'}}
  %y = moe.combine %r, %e, %c on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<?x32xf32>, tensor<16x2xi64>, tensor<?x2xi64>) -> tensor<16x32xf32>
  return
}

// -----

// Tests that every layer's logits have the same experts.
func.func @load_balancing_stats_layers(%a: tensor<16x4xf32>, %b: tensor<16x8xf32>) {
  // expected-error@+1 {{'moe.load_balancing_stats' op logits of layer 1 have 8 experts but earlier layers have 4}}
  %s = moe.load_balancing_stats %a, %b {k = 2 : i64} : (tensor<16x4xf32>, tensor<16x8xf32>) -> tensor<2x4xf32>
  return
}

// -----

// Tests that load-balancing statistics need at least one layer.
func.func @load_balancing_stats_empty() {
  // expected-error@+1 {{'moe.load_balancing_stats' op needs the router logits of at least one layer}}
  %s = moe.load_balancing_stats {k = 2 : i64} : () -> tensor<2x4xf32>
  return
}

// -----

// Tests that a combine's expert choices have a choice dimension.
func.func @combine_experts_rank(%r: tensor<?x32xf32>, %e: tensor<i64>, %c: tensor<2x2xi64>) {
  // expected-error@+1 {{'moe.combine' op experts must have rank at least 1}}
  %y = moe.combine %r, %e, %c on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<?x32xf32>, tensor<i64>, tensor<2x2xi64>) -> tensor<32xf32>
  return
}

// -----

// Tests that a dispatch's input has a hidden dimension.
func.func @dispatch_input_rank(%x: tensor<f32>, %e: tensor<2xi64>) {
  // expected-error@+1 {{'moe.dispatch' op input must have rank at least 1}}
  %r, %re, %c = moe.dispatch %x, %e on @mesh grid_axes = [2] {dispatcher = #moe.dispatcher<all_to_all>} : (tensor<f32>, tensor<2xi64>) -> (tensor<?x1xf32>, tensor<?x1xi64>, tensor<2x2xi64>)
  return
}

// -----

// Tests that a token shuffle moves tokens of a hidden dimension.
func.func @token_shuffle_rank(%x: tensor<f32>, %s: tensor<i64>) {
  // expected-error@+1 {{'moe.token_shuffle' op input must have rank at least 1}}
  %y = moe.token_shuffle %x, %s on @mesh grid_axes = [2] {seed = 0 : i64} : (tensor<f32>, tensor<i64>) -> tensor<f32>
  return
}

// -----

// Tests that moe.initializer belongs on a parameter argument.
// expected-error@+1 {{'func.func' op has 'moe.initializer' on argument #0, which is not a function's parameter}}
func.func @initializer_not_parameter(%x: tensor<2x4xf32> {moe.initializer = "val_1"}) {
  return
}

// -----

// Tests that moe.initializer names an initializer.
// expected-error@+1 {{'func.func' op has 'moe.initializer' on argument #0 that is ""; it must be a non-empty string}}
func.func @initializer_empty(%x: tensor<2x4xf32> {moe.parameter = "w", moe.initializer = ""}) {
  return
}

// -----

// Tests that moe.initializer_permutation permutes the argument's dimensions.
// expected-error@+1 {{'func.func' op has 'moe.initializer_permutation' on argument #0 that is array<i64: 0, 0>; it must be a permutation of the argument's dimensions}}
func.func @initializer_not_permutation(%x: tensor<2x4xf32> {moe.parameter = "w", moe.initializer_permutation = array<i64: 0, 0>}) {
  return
}

// -----

// Tests that moe.initializer_permutation has one entry per dimension.
// expected-error@+1 {{'func.func' op has 'moe.initializer_permutation' on argument #0 that is array<i64: 0>; it must be a permutation of the argument's dimensions}}
func.func @initializer_permutation_rank(%x: tensor<2x4xf32> {moe.parameter = "w", moe.initializer_permutation = array<i64: 0>}) {
  return
}

// -----

// Tests that moe.initializer_pieces belongs on a parameter.
// expected-error@+1 {{'func.func' op has 'moe.initializer_pieces' on argument #0, which is not a function's parameter}}
func.func @pieces_not_parameter(%x: tensor<2x4xf32> {moe.input = "x", moe.initializer_pieces = [{initializer = "a", offsets = array<i64: 0, 0>, sizes = array<i64: 2, 4>, permutation = array<i64: 0, 1>}]}) {
  return
}

// -----

// Tests that each piece names its initializer, offsets, sizes and permutation.
// expected-error@+1 {{'func.func' op has 'moe.initializer_pieces' on argument #0 that has piece #0 that is not {initializer = "<name>", offsets, sizes, permutation}}}
func.func @pieces_no_offsets(%x: tensor<2x4xf32> {moe.parameter = "w", moe.initializer_pieces = [{initializer = "a", sizes = array<i64: 2, 4>, permutation = array<i64: 0, 1>}]}) {
  return
}

// -----

// Tests that a piece's box lies inside the parameter.
// expected-error@+1 {{'func.func' op has 'moe.initializer_pieces' on argument #0 that has piece #1 whose box leaves the argument in dimension 0}}
func.func @pieces_outside(%x: tensor<2x4xf32> {moe.parameter = "w", moe.initializer_pieces = [{initializer = "a", offsets = array<i64: 0, 0>, sizes = array<i64: 1, 4>, permutation = array<i64: 0>}, {initializer = "b", offsets = array<i64: 2, 0>, sizes = array<i64: 1, 4>, permutation = array<i64: 0>}]}) {
  return
}

// -----

// Tests that the boxes add up to the parameter (a gap).
// expected-error@+1 {{'func.func' op has 'moe.initializer_pieces' on argument #0 that has boxes of 4 elements for an argument of 8}}
func.func @pieces_gap(%x: tensor<2x4xf32> {moe.parameter = "w", moe.initializer_pieces = [{initializer = "a", offsets = array<i64: 0, 0>, sizes = array<i64: 1, 4>, permutation = array<i64: 0>}]}) {
  return
}

// -----

// Tests that a piece's permutation is one.
// expected-error@+1 {{'func.func' op has 'moe.initializer_pieces' on argument #0 that has piece #0 whose permutation is not a permutation}}
func.func @pieces_permutation(%x: tensor<2x4xf32> {moe.parameter = "w", moe.initializer_pieces = [{initializer = "a", offsets = array<i64: 0, 0>, sizes = array<i64: 2, 4>, permutation = array<i64: 1, 1>}]}) {
  return
}

// -----

// Tests that moe.expert_local marks only parameters and AdamW moments.
// expected-error@+1 {{'func.func' op has 'moe.expert_local' on argument #0, which is neither a parameter nor an AdamW moment}}
func.func @expert_local_not_state(%x: tensor<2x4xf32> {moe.expert_local}) {
  return
}

// -----

// Tests that moe.expert_local is a unit attribute.
// expected-error@+1 {{'func.func' op has 'moe.expert_local' on argument #0 that is 1 : i64; it must be a unit}}
func.func @expert_local_value(%w: tensor<2x4xf32> {moe.parameter = "w", moe.expert_local = 1 : i64}) {
  return
}

// -----

// Tests that moe.recompute names a layer and the selective or full policy.
func.func @recompute_policy(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.recompute' = #moe.recompute<layer = 0, auto>; it is a #moe.recompute with a layer of at least 0 and the policy selective or full}}
  %n = arith.negf %w {moe.recompute = #moe.recompute<layer = 0, auto>} : tensor<4xf32>
  return
}

// -----

// Tests that moe.recompute is a #moe.recompute.
func.func @recompute_type(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.recompute' = 3 : i64; it is a #moe.recompute with a layer of at least 0 and the policy selective or full}}
  %n = arith.negf %w {moe.recompute = 3 : i64} : tensor<4xf32>
  return
}

// -----

// Tests that a recomputed op's layer is not negative.
func.func @recompute_layer(%w: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.recompute' = #moe.recompute<layer = -1, full>; it is a #moe.recompute with a layer of at least 0 and the policy selective or full}}
  %n = arith.negf %w {moe.recompute = #moe.recompute<layer = -1, full>} : tensor<4xf32>
  return
}

// -----

// Tests that moe.all_ones marks only inputs.
// expected-error@+1 {{'func.func' op has 'moe.all_ones' = unit on argument #0; it is a unit attribute of a function argument with 'moe.input'}}
func.func @all_ones_not_input(%w: tensor<2x4xf32> {moe.parameter = "w", moe.all_ones}) {
  return
}

// -----

// Tests that moe.offload makes a host copy of a device tensor.
func.func @offload_to_device(%x: tensor<4xf32>) {
  // expected-error@+1 {{'moe.offload' op result has type 'tensor<4xf32>'; it must be a host tensor (encoding #moe.host)}}
  %h = moe.offload %x layer 0 : tensor<4xf32> -> tensor<4xf32>
  return
}

// -----

// Tests that moe.all_ones is a unit attribute.
// expected-error@+1 {{'func.func' op has 'moe.all_ones' = true on argument #0; it is a unit attribute of a function argument with 'moe.input'}}
func.func @all_ones_value(%m: tensor<2x4xi64> {moe.input = "attention_mask", moe.all_ones = true}) {
  return
}

// -----

// Tests that moe.offload reads a device tensor.
func.func @offload_from_host(%x: tensor<4xf32, #moe.host>) {
  // expected-error@+1 {{'moe.offload' op input has type 'tensor<4xf32, #moe.host>'; it must be a device tensor (no encoding)}}
  %h = moe.offload %x layer 0 : tensor<4xf32, #moe.host> -> tensor<4xf32, #moe.host>
  return
}

// -----

// Tests that the host copy has the shape and element type of the value.
func.func @offload_shape(%x: tensor<4xf32>) {
  // expected-error@+1 {{'moe.offload' op input 'tensor<4xf32>' and result 'tensor<8xf32, #moe.host>' must have the same shape and element type}}
  %h = moe.offload %x layer 0 : tensor<4xf32> -> tensor<8xf32, #moe.host>
  return
}

// -----

// Tests that a layer is not negative.
func.func @offload_layer(%x: tensor<4xf32>) {
  // expected-error@+1 {{'moe.offload' op attribute 'layer' failed to satisfy constraint: 64-bit signless integer attribute whose value is non-negative}}
  %h = moe.offload %x layer -1 : tensor<4xf32> -> tensor<4xf32, #moe.host>
  return
}

// -----

// Tests that moe.fetch reads a host tensor.
func.func @fetch_from_device(%x: tensor<4xf32>) {
  // expected-error@+1 {{'moe.fetch' op input has type 'tensor<4xf32>'; it must be a host tensor (encoding #moe.host)}}
  %y = moe.fetch %x layer 0 : tensor<4xf32> -> tensor<4xf32>
  return
}

// -----

// Tests that moe.fetch reads what a moe.offload made.
func.func @fetch_argument(%h: tensor<4xf32, #moe.host>) {
  // expected-error@+1 {{'moe.fetch' op input is not made by moe.offload}}
  %y = moe.fetch %h layer 0 : tensor<4xf32, #moe.host> -> tensor<4xf32>
  return
}

// -----

// Tests that moe.fetch brings the value back for the layer it was offloaded
// for.
func.func @fetch_layer(%x: tensor<4xf32>) {
  %h = moe.offload %x layer 1 : tensor<4xf32> -> tensor<4xf32, #moe.host>
  // expected-error@+1 {{'moe.fetch' op fetches for layer 0 a value offloaded for layer 1}}
  %y = moe.fetch %h layer 0 : tensor<4xf32, #moe.host> -> tensor<4xf32>
  return
}

// -----

// Tests that moe.offload_join ends the copy of a moe.offload.
func.func @offload_join_argument(%h: tensor<4xf32, #moe.host>) {
  // expected-error@+1 {{'moe.offload_join' op input is not made by moe.offload}}
  moe.offload_join %h : tensor<4xf32, #moe.host>
  return
}

// -----

// Tests that moe.offload_layers names decoder layers on a function.
// expected-error@+1 {{'func.func' op has 'moe.offload_layers' = array<i64: -1>; it is an array<i64> of decoder layers (each at least 0) on a function}}
func.func @offload_layers(%x: tensor<4xf32>) attributes {moe.offload_layers = array<i64: -1>} {
  return
}

// -----

// Tests that moe.host_offsets is one offset on a moe.offload.
func.func @host_offsets(%x: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.host_offsets' = array<i64: 0>; it is one offset of at least 0 on moe.offload}}
  %y = arith.negf %x {moe.host_offsets = array<i64: 0>} : tensor<4xf32>
  return
}

// -----

// Tests that moe.host_bytes is a function's.
func.func @host_bytes(%x: tensor<4xf32>) {
  // expected-error@+1 {{'arith.negf' op has 'moe.host_bytes' = 4 : i64; it is an i64 of at least 0 on a function}}
  %y = arith.negf %x {moe.host_bytes = 4 : i64} : tensor<4xf32>
  return
}
