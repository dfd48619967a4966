// RUN: moec-opt %s -moe-build-train-step="compute-type=bf16" | FileCheck %s
// RUN: moec-opt %s -moe-build-train-step="compute-type=bf16" -mlir-print-op-generic | FileCheck %s --check-prefix=BODY

// Tests that a linalg op left by raising (the transpose of a weight an
// exporter stored [in, out]) is computed in bf16 with a body of bf16
// scalars: retyping only its results left the body yielding f32 into a
// bf16 tensor, which the verifier rejects.
func.func @forward(%ids: tensor<2x8xi64> {moe.input = "input_ids"},
                   %table: tensor<64x16xf32> {moe.parameter = "embed.weight"},
                   %router: tensor<4x16xf32> {moe.parameter = "gate.weight"},
                   %gate_up: tensor<4x32x16xf32> {moe.parameter = "experts.gate_up_proj"},
                   %down: tensor<4x16x16xf32> {moe.parameter = "experts.down_proj"},
                   %head_t: tensor<16x64xf32> {moe.parameter = "lm_head.weight"})
    -> (tensor<2x8x64xf32> {moe.output = "logits"}) {
  %x = moe.embedding %table[%ids] : (tensor<64x16xf32>, tensor<2x8xi64>) -> tensor<2x8x16xf32>
  %l = moe.linear %x, %router : (tensor<2x8x16xf32>, tensor<4x16xf32>) -> tensor<2x8x4xf32>
  %g, %e = moe.router %l {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<2x8x4xf32>) -> (tensor<2x8x2xf32>, tensor<2x8x2xi64>)
  %h = moe.experts %x, %g, %e, %gate_up, %down {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<2x8x16xf32>, tensor<2x8x2xf32>, tensor<2x8x2xi64>, tensor<4x32x16xf32>, tensor<4x16x16xf32>) -> tensor<2x8x16xf32>
  %empty = tensor.empty() : tensor<64x16xf32>
  %head = linalg.transpose ins(%head_t : tensor<16x64xf32>) outs(%empty : tensor<64x16xf32>) permutation = [1, 0]
  %o = moe.lm_head %h, %head : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %o : tensor<2x8x64xf32>
}

// CHECK-LABEL: func.func @train_step(
// CHECK: %[[COPY:.+]] = arith.truncf %{{.+}} : tensor<16x64xf32> to tensor<16x64xbf16>
// CHECK: %[[EMPTY:.+]] = tensor.empty() : tensor<64x16xbf16>
// CHECK: %[[HEAD:.+]] = linalg.transpose ins(%[[COPY]] : tensor<16x64xbf16>) outs(%[[EMPTY]] : tensor<64x16xbf16>) permutation = [1, 0]
// CHECK: moe.lm_head_cross_entropy %{{.+}}, %[[HEAD]], %{{.+}} : (tensor<2x8x16xbf16>, tensor<64x16xbf16>, tensor<2x8xi64>)
// The backward transposes the weight's gradient back.
// CHECK: %[[DHEAD:.+]] = linalg.transpose ins(%{{.+}} : tensor<64x16xbf16>) outs(%{{.+}} : tensor<16x64xbf16>) permutation = [1, 0]
// CHECK: arith.extf %[[DHEAD]] : tensor<16x64xbf16> to tensor<16x64xf32>

// BODY-LABEL: sym_name = "train_step"
// BODY: "linalg.transpose"
// BODY-NEXT: ^bb0(%{{.+}}: bf16, %{{.+}}: bf16):
// BODY-NEXT: "linalg.yield"(%{{.+}}) : (bf16) -> ()
