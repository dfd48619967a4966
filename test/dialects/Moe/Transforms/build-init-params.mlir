// RUN: moec-opt %s -moe-build-init-params="initializer-range=0.5" | FileCheck %s
// RUN: not moec-opt %s -moe-build-init-params="initializer-range=0" 2>&1 | FileCheck %s --check-prefix=RANGE

// Tests that every parameter of @forward gets a moe.param_init of the seed,
// in argument order: ones for the RMSNorm weight, normal for the rest.
// CHECK-LABEL: func.func @init_params(
// CHECK-SAME: %[[SEED:.+]]: tensor<i64> {moe.input = "seed"}
// CHECK-SAME: -> (tensor<8x4xf32> {moe.parameter = "embed.weight"}, tensor<4xf32> {moe.parameter = "norm.weight"}, tensor<8x4xf32> {moe.parameter = "lm_head.weight"})
// CHECK: %[[E:.+]] = moe.param_init %[[SEED]] {kind = #moe.param_init<normal>, name = "embed.weight", std = 5.000000e-01 : f64} : (tensor<i64>) -> tensor<8x4xf32>
// CHECK: %[[N:.+]] = moe.param_init %[[SEED]] {kind = #moe.param_init<ones>, name = "norm.weight"} : (tensor<i64>) -> tensor<4xf32>
// CHECK: %[[H:.+]] = moe.param_init %[[SEED]] {kind = #moe.param_init<normal>, name = "lm_head.weight", std = 5.000000e-01 : f64}
// CHECK: return %[[E]], %[[N]], %[[H]]
// RANGE: error: initializer-range must be positive but is 0.000000e+00
func.func @forward(%ids: tensor<2x3xi64> {moe.input = "input_ids"},
                   %table: tensor<8x4xf32> {moe.parameter = "embed.weight"},
                   %norm: tensor<4xf32> {moe.parameter = "norm.weight"},
                   %head: tensor<8x4xf32> {moe.parameter = "lm_head.weight"}) -> tensor<2x3x8xf32> {
  %h = moe.embedding %table[%ids] : (tensor<8x4xf32>, tensor<2x3xi64>) -> tensor<2x3x4xf32>
  %n = moe.rms_norm %h, %norm {epsilon = 1.0e-05 : f64} : (tensor<2x3x4xf32>, tensor<4xf32>) -> tensor<2x3x4xf32>
  %o = moe.lm_head %n, %head : (tensor<2x3x4xf32>, tensor<8x4xf32>) -> tensor<2x3x8xf32>
  return %o : tensor<2x3x8xf32>
}
