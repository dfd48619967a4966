// RUN: moec-opt %s -split-input-file -pass-pipeline='builtin.module(func.func(moe-save-attention-stats))' | FileCheck %s

// The forward keeps its log-sum-exp ([batch, q_heads, seq] fp32) and the
// gradient reads it with the forward's result.
// CHECK-LABEL: func.func @pair(
// CHECK: %[[O:.+]], %[[LSE:.+]] = moe.attention {{.*}} -> (tensor<2x8x4x16xbf16>, tensor<2x4x8xf32>)
// CHECK: moe.attention_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[O]], %[[LSE]] {scale = 2.500000e-01 : f64, sliding_window = 4 : i64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>, tensor<2x4x8xf32>)
func.func @pair(%q: tensor<2x8x4x16xbf16>, %k: tensor<2x8x2x16xbf16>, %v: tensor<2x8x2x16xbf16>, %do: tensor<2x8x4x16xbf16>)
    -> (tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>) {
  %o = moe.attention %q, %k, %v {scale = 0.25 : f64, sliding_window = 4 : i64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>) -> tensor<2x8x4x16xbf16>
  %dq, %dk, %dv = moe.attention_grad %q, %k, %v, %do {scale = 0.25 : f64, sliding_window = 4 : i64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x4x16xbf16>) -> (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>)
  return %o, %dq : tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>
}

// -----

// Another scale is another attention: nothing is saved.
// CHECK-LABEL: func.func @other_scale(
// CHECK: moe.attention {{.*}} -> tensor<2x8x4x16xbf16>
// CHECK: moe.attention_grad {{.*}} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x4x16xbf16>) ->
func.func @other_scale(%q: tensor<2x8x4x16xbf16>, %k: tensor<2x8x2x16xbf16>, %v: tensor<2x8x2x16xbf16>, %do: tensor<2x8x4x16xbf16>)
    -> (tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>) {
  %o = moe.attention %q, %k, %v {scale = 0.25 : f64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>) -> tensor<2x8x4x16xbf16>
  %dq, %dk, %dv = moe.attention_grad %q, %k, %v, %do {scale = 0.5 : f64} : (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x4x16xbf16>) -> (tensor<2x8x4x16xbf16>, tensor<2x8x2x16xbf16>, tensor<2x8x2x16xbf16>)
  return %o, %dq : tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>
}
