module attributes {moe.onnx.opset = 20 : i64, moe.onnx.producer = "pytorch 2.15.0+cu132"} {
  func.func @forward(%arg0: tensor<?x?xi64> {moe.input = "input_ids"}, %arg1: tensor<32000x4096xf32> {moe.parameter = "model.embed_tokens.weight"}, %arg2: tensor<4096x4096xf32> {moe.parameter = "model.layers.0.self_attn.q_proj.weight"}, %arg3: tensor<1024x4096xf32> {moe.parameter = "model.layers.0.self_attn.k_proj.weight"}, %arg4: tensor<1024x4096xf32> {moe.parameter = "model.layers.0.self_attn.v_proj.weight"}, %arg5: tensor<4096x4096xf32> {moe.parameter = "model.layers.0.self_attn.o_proj.weight"}, %arg6: tensor<8x4096xf32> {moe.parameter = "model.layers.0.mlp.gate.weight"}, %arg7: tensor<8x28672x4096xf32> {moe.parameter = "model.layers.0.mlp.experts.gate_up_proj"}, %arg8: tensor<8x4096x14336xf32> {moe.parameter = "model.layers.0.mlp.experts.down_proj"}, %arg9: tensor<4096xf32> {moe.parameter = "model.layers.0.input_layernorm.weight"}, %arg10: tensor<4096xf32> {moe.parameter = "model.layers.0.post_attention_layernorm.weight"}, %arg11: tensor<4096x4096xf32> {moe.parameter = "model.layers.1.self_attn.q_proj.weight"}, %arg12: tensor<1024x4096xf32> {moe.parameter = "model.layers.1.self_attn.k_proj.weight"}, %arg13: tensor<1024x4096xf32> {moe.parameter = "model.layers.1.self_attn.v_proj.weight"}, %arg14: tensor<4096x4096xf32> {moe.parameter = "model.layers.1.self_attn.o_proj.weight"}, %arg15: tensor<8x4096xf32> {moe.parameter = "model.layers.1.mlp.gate.weight"}, %arg16: tensor<8x28672x4096xf32> {moe.parameter = "model.layers.1.mlp.experts.gate_up_proj"}, %arg17: tensor<8x4096x14336xf32> {moe.parameter = "model.layers.1.mlp.experts.down_proj"}, %arg18: tensor<4096xf32> {moe.parameter = "model.layers.1.input_layernorm.weight"}, %arg19: tensor<4096xf32> {moe.parameter = "model.layers.1.post_attention_layernorm.weight"}, %arg20: tensor<4096x4096xf32> {moe.parameter = "model.layers.2.self_attn.q_proj.weight"}, %arg21: tensor<1024x4096xf32> {moe.parameter = "model.layers.2.self_attn.k_proj.weight"}, %arg22: tensor<1024x4096xf32> {moe.parameter = "model.layers.2.self_attn.v_proj.weight"}, %arg23: tensor<4096x4096xf32> {moe.parameter = "model.layers.2.self_attn.o_proj.weight"}, %arg24: tensor<8x4096xf32> {moe.parameter = "model.layers.2.mlp.gate.weight"}, %arg25: tensor<8x28672x4096xf32> {moe.parameter = "model.layers.2.mlp.experts.gate_up_proj"}, %arg26: tensor<8x4096x14336xf32> {moe.parameter = "model.layers.2.mlp.experts.down_proj"}, %arg27: tensor<4096xf32> {moe.parameter = "model.layers.2.input_layernorm.weight"}, %arg28: tensor<4096xf32> {moe.parameter = "model.layers.2.post_attention_layernorm.weight"}, %arg29: tensor<4096x4096xf32> {moe.parameter = "model.layers.3.self_attn.q_proj.weight"}, %arg30: tensor<1024x4096xf32> {moe.parameter = "model.layers.3.self_attn.k_proj.weight"}, %arg31: tensor<1024x4096xf32> {moe.parameter = "model.layers.3.self_attn.v_proj.weight"}, %arg32: tensor<4096x4096xf32> {moe.parameter = "model.layers.3.self_attn.o_proj.weight"}, %arg33: tensor<8x4096xf32> {moe.parameter = "model.layers.3.mlp.gate.weight"}, %arg34: tensor<8x28672x4096xf32> {moe.parameter = "model.layers.3.mlp.experts.gate_up_proj"}, %arg35: tensor<8x4096x14336xf32> {moe.parameter = "model.layers.3.mlp.experts.down_proj"}, %arg36: tensor<4096xf32> {moe.parameter = "model.layers.3.input_layernorm.weight"}, %arg37: tensor<4096xf32> {moe.parameter = "model.layers.3.post_attention_layernorm.weight"}, %arg38: tensor<4096xf32> {moe.parameter = "model.norm.weight"}, %arg39: tensor<32000x4096xf32> {moe.parameter = "lm_head.weight"}) -> (tensor<?x?x32000xf32> {moe.output = "logits"}) {
    %c1 = arith.constant 1 : index
    %c0 = arith.constant 0 : index
    %0 = moe.embedding %arg1[%arg0] : (tensor<32000x4096xf32>, tensor<?x?xi64>) -> tensor<?x?x4096xf32>
    %1 = moe.rms_norm %0, %arg9 {epsilon = 9.9999997473787516E-6 : f64} : (tensor<?x?x4096xf32>, tensor<4096xf32>) -> tensor<?x?x4096xf32>
    %2 = moe.linear %1, %arg2 : (tensor<?x?x4096xf32>, tensor<4096x4096xf32>) -> tensor<?x?x4096xf32>
    %3 = moe.linear %1, %arg3 : (tensor<?x?x4096xf32>, tensor<1024x4096xf32>) -> tensor<?x?x1024xf32>
    %4 = moe.linear %1, %arg4 : (tensor<?x?x4096xf32>, tensor<1024x4096xf32>) -> tensor<?x?x1024xf32>
    %dim = tensor.dim %2, %c0 : tensor<?x?x4096xf32>
    %dim_0 = tensor.dim %2, %c1 : tensor<?x?x4096xf32>
    %expanded = tensor.expand_shape %2 [[0], [1], [2, 3]] output_shape [%dim, %dim_0, 32, 128] : tensor<?x?x4096xf32> into tensor<?x?x32x128xf32>
    %dim_1 = tensor.dim %3, %c0 : tensor<?x?x1024xf32>
    %dim_2 = tensor.dim %3, %c1 : tensor<?x?x1024xf32>
    %expanded_3 = tensor.expand_shape %3 [[0], [1], [2, 3]] output_shape [%dim_1, %dim_2, 8, 128] : tensor<?x?x1024xf32> into tensor<?x?x8x128xf32>
    %dim_4 = tensor.dim %4, %c0 : tensor<?x?x1024xf32>
    %dim_5 = tensor.dim %4, %c1 : tensor<?x?x1024xf32>
    %expanded_6 = tensor.expand_shape %4 [[0], [1], [2, 3]] output_shape [%dim_4, %dim_5, 8, 128] : tensor<?x?x1024xf32> into tensor<?x?x8x128xf32>
    %5 = moe.rotary %expanded {theta = 1.000000e+06 : f64} : (tensor<?x?x32x128xf32>) -> tensor<?x?x32x128xf32>
    %6 = moe.rotary %expanded_3 {theta = 1.000000e+06 : f64} : (tensor<?x?x8x128xf32>) -> tensor<?x?x8x128xf32>
    %result = moe.attention %5, %6, %expanded_6 {scale = 0.088388347648318433 : f64} : (tensor<?x?x32x128xf32>, tensor<?x?x8x128xf32>, tensor<?x?x8x128xf32>) -> tensor<?x?x32x128xf32>
    %collapsed = tensor.collapse_shape %result [[0], [1], [2, 3]] : tensor<?x?x32x128xf32> into tensor<?x?x4096xf32>
    %7 = moe.linear %collapsed, %arg5 : (tensor<?x?x4096xf32>, tensor<4096x4096xf32>) -> tensor<?x?x4096xf32>
    %8 = arith.addf %0, %7 : tensor<?x?x4096xf32>
    %9 = moe.rms_norm %8, %arg10 {epsilon = 9.9999997473787516E-6 : f64} : (tensor<?x?x4096xf32>, tensor<4096xf32>) -> tensor<?x?x4096xf32>
    %10 = moe.linear %9, %arg6 : (tensor<?x?x4096xf32>, tensor<8x4096xf32>) -> tensor<?x?x8xf32>
    %gates, %experts = moe.router %10 {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<?x?x8xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi64>)
    %result_7 = moe.experts %9, %gates, %experts, %arg7, %arg8 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x?x4096xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi64>, tensor<8x28672x4096xf32>, tensor<8x4096x14336xf32>) -> tensor<?x?x4096xf32>
    %11 = arith.addf %8, %result_7 : tensor<?x?x4096xf32>
    %12 = moe.rms_norm %11, %arg18 {epsilon = 9.9999997473787516E-6 : f64} : (tensor<?x?x4096xf32>, tensor<4096xf32>) -> tensor<?x?x4096xf32>
    %13 = moe.linear %12, %arg11 : (tensor<?x?x4096xf32>, tensor<4096x4096xf32>) -> tensor<?x?x4096xf32>
    %14 = moe.linear %12, %arg12 : (tensor<?x?x4096xf32>, tensor<1024x4096xf32>) -> tensor<?x?x1024xf32>
    %15 = moe.linear %12, %arg13 : (tensor<?x?x4096xf32>, tensor<1024x4096xf32>) -> tensor<?x?x1024xf32>
    %dim_8 = tensor.dim %13, %c0 : tensor<?x?x4096xf32>
    %dim_9 = tensor.dim %13, %c1 : tensor<?x?x4096xf32>
    %expanded_10 = tensor.expand_shape %13 [[0], [1], [2, 3]] output_shape [%dim_8, %dim_9, 32, 128] : tensor<?x?x4096xf32> into tensor<?x?x32x128xf32>
    %dim_11 = tensor.dim %14, %c0 : tensor<?x?x1024xf32>
    %dim_12 = tensor.dim %14, %c1 : tensor<?x?x1024xf32>
    %expanded_13 = tensor.expand_shape %14 [[0], [1], [2, 3]] output_shape [%dim_11, %dim_12, 8, 128] : tensor<?x?x1024xf32> into tensor<?x?x8x128xf32>
    %dim_14 = tensor.dim %15, %c0 : tensor<?x?x1024xf32>
    %dim_15 = tensor.dim %15, %c1 : tensor<?x?x1024xf32>
    %expanded_16 = tensor.expand_shape %15 [[0], [1], [2, 3]] output_shape [%dim_14, %dim_15, 8, 128] : tensor<?x?x1024xf32> into tensor<?x?x8x128xf32>
    %16 = moe.rotary %expanded_10 {theta = 1.000000e+06 : f64} : (tensor<?x?x32x128xf32>) -> tensor<?x?x32x128xf32>
    %17 = moe.rotary %expanded_13 {theta = 1.000000e+06 : f64} : (tensor<?x?x8x128xf32>) -> tensor<?x?x8x128xf32>
    %result_17 = moe.attention %16, %17, %expanded_16 {scale = 0.088388347648318433 : f64} : (tensor<?x?x32x128xf32>, tensor<?x?x8x128xf32>, tensor<?x?x8x128xf32>) -> tensor<?x?x32x128xf32>
    %collapsed_18 = tensor.collapse_shape %result_17 [[0], [1], [2, 3]] : tensor<?x?x32x128xf32> into tensor<?x?x4096xf32>
    %18 = moe.linear %collapsed_18, %arg14 : (tensor<?x?x4096xf32>, tensor<4096x4096xf32>) -> tensor<?x?x4096xf32>
    %19 = arith.addf %11, %18 : tensor<?x?x4096xf32>
    %20 = moe.rms_norm %19, %arg19 {epsilon = 9.9999997473787516E-6 : f64} : (tensor<?x?x4096xf32>, tensor<4096xf32>) -> tensor<?x?x4096xf32>
    %21 = moe.linear %20, %arg15 : (tensor<?x?x4096xf32>, tensor<8x4096xf32>) -> tensor<?x?x8xf32>
    %gates_19, %experts_20 = moe.router %21 {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<?x?x8xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi64>)
    %result_21 = moe.experts %20, %gates_19, %experts_20, %arg16, %arg17 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x?x4096xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi64>, tensor<8x28672x4096xf32>, tensor<8x4096x14336xf32>) -> tensor<?x?x4096xf32>
    %22 = arith.addf %19, %result_21 : tensor<?x?x4096xf32>
    %23 = moe.rms_norm %22, %arg27 {epsilon = 9.9999997473787516E-6 : f64} : (tensor<?x?x4096xf32>, tensor<4096xf32>) -> tensor<?x?x4096xf32>
    %24 = moe.linear %23, %arg20 : (tensor<?x?x4096xf32>, tensor<4096x4096xf32>) -> tensor<?x?x4096xf32>
    %25 = moe.linear %23, %arg21 : (tensor<?x?x4096xf32>, tensor<1024x4096xf32>) -> tensor<?x?x1024xf32>
    %26 = moe.linear %23, %arg22 : (tensor<?x?x4096xf32>, tensor<1024x4096xf32>) -> tensor<?x?x1024xf32>
    %dim_22 = tensor.dim %24, %c0 : tensor<?x?x4096xf32>
    %dim_23 = tensor.dim %24, %c1 : tensor<?x?x4096xf32>
    %expanded_24 = tensor.expand_shape %24 [[0], [1], [2, 3]] output_shape [%dim_22, %dim_23, 32, 128] : tensor<?x?x4096xf32> into tensor<?x?x32x128xf32>
    %dim_25 = tensor.dim %25, %c0 : tensor<?x?x1024xf32>
    %dim_26 = tensor.dim %25, %c1 : tensor<?x?x1024xf32>
    %expanded_27 = tensor.expand_shape %25 [[0], [1], [2, 3]] output_shape [%dim_25, %dim_26, 8, 128] : tensor<?x?x1024xf32> into tensor<?x?x8x128xf32>
    %dim_28 = tensor.dim %26, %c0 : tensor<?x?x1024xf32>
    %dim_29 = tensor.dim %26, %c1 : tensor<?x?x1024xf32>
    %expanded_30 = tensor.expand_shape %26 [[0], [1], [2, 3]] output_shape [%dim_28, %dim_29, 8, 128] : tensor<?x?x1024xf32> into tensor<?x?x8x128xf32>
    %27 = moe.rotary %expanded_24 {theta = 1.000000e+06 : f64} : (tensor<?x?x32x128xf32>) -> tensor<?x?x32x128xf32>
    %28 = moe.rotary %expanded_27 {theta = 1.000000e+06 : f64} : (tensor<?x?x8x128xf32>) -> tensor<?x?x8x128xf32>
    %result_31 = moe.attention %27, %28, %expanded_30 {scale = 0.088388347648318433 : f64} : (tensor<?x?x32x128xf32>, tensor<?x?x8x128xf32>, tensor<?x?x8x128xf32>) -> tensor<?x?x32x128xf32>
    %collapsed_32 = tensor.collapse_shape %result_31 [[0], [1], [2, 3]] : tensor<?x?x32x128xf32> into tensor<?x?x4096xf32>
    %29 = moe.linear %collapsed_32, %arg23 : (tensor<?x?x4096xf32>, tensor<4096x4096xf32>) -> tensor<?x?x4096xf32>
    %30 = arith.addf %22, %29 : tensor<?x?x4096xf32>
    %31 = moe.rms_norm %30, %arg28 {epsilon = 9.9999997473787516E-6 : f64} : (tensor<?x?x4096xf32>, tensor<4096xf32>) -> tensor<?x?x4096xf32>
    %32 = moe.linear %31, %arg24 : (tensor<?x?x4096xf32>, tensor<8x4096xf32>) -> tensor<?x?x8xf32>
    %gates_33, %experts_34 = moe.router %32 {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<?x?x8xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi64>)
    %result_35 = moe.experts %31, %gates_33, %experts_34, %arg25, %arg26 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x?x4096xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi64>, tensor<8x28672x4096xf32>, tensor<8x4096x14336xf32>) -> tensor<?x?x4096xf32>
    %33 = arith.addf %30, %result_35 : tensor<?x?x4096xf32>
    %34 = moe.rms_norm %33, %arg36 {epsilon = 9.9999997473787516E-6 : f64} : (tensor<?x?x4096xf32>, tensor<4096xf32>) -> tensor<?x?x4096xf32>
    %35 = moe.linear %34, %arg29 : (tensor<?x?x4096xf32>, tensor<4096x4096xf32>) -> tensor<?x?x4096xf32>
    %36 = moe.linear %34, %arg30 : (tensor<?x?x4096xf32>, tensor<1024x4096xf32>) -> tensor<?x?x1024xf32>
    %37 = moe.linear %34, %arg31 : (tensor<?x?x4096xf32>, tensor<1024x4096xf32>) -> tensor<?x?x1024xf32>
    %dim_36 = tensor.dim %35, %c0 : tensor<?x?x4096xf32>
    %dim_37 = tensor.dim %35, %c1 : tensor<?x?x4096xf32>
    %expanded_38 = tensor.expand_shape %35 [[0], [1], [2, 3]] output_shape [%dim_36, %dim_37, 32, 128] : tensor<?x?x4096xf32> into tensor<?x?x32x128xf32>
    %dim_39 = tensor.dim %36, %c0 : tensor<?x?x1024xf32>
    %dim_40 = tensor.dim %36, %c1 : tensor<?x?x1024xf32>
    %expanded_41 = tensor.expand_shape %36 [[0], [1], [2, 3]] output_shape [%dim_39, %dim_40, 8, 128] : tensor<?x?x1024xf32> into tensor<?x?x8x128xf32>
    %dim_42 = tensor.dim %37, %c0 : tensor<?x?x1024xf32>
    %dim_43 = tensor.dim %37, %c1 : tensor<?x?x1024xf32>
    %expanded_44 = tensor.expand_shape %37 [[0], [1], [2, 3]] output_shape [%dim_42, %dim_43, 8, 128] : tensor<?x?x1024xf32> into tensor<?x?x8x128xf32>
    %38 = moe.rotary %expanded_38 {theta = 1.000000e+06 : f64} : (tensor<?x?x32x128xf32>) -> tensor<?x?x32x128xf32>
    %39 = moe.rotary %expanded_41 {theta = 1.000000e+06 : f64} : (tensor<?x?x8x128xf32>) -> tensor<?x?x8x128xf32>
    %result_45 = moe.attention %38, %39, %expanded_44 {scale = 0.088388347648318433 : f64} : (tensor<?x?x32x128xf32>, tensor<?x?x8x128xf32>, tensor<?x?x8x128xf32>) -> tensor<?x?x32x128xf32>
    %collapsed_46 = tensor.collapse_shape %result_45 [[0], [1], [2, 3]] : tensor<?x?x32x128xf32> into tensor<?x?x4096xf32>
    %40 = moe.linear %collapsed_46, %arg32 : (tensor<?x?x4096xf32>, tensor<4096x4096xf32>) -> tensor<?x?x4096xf32>
    %41 = arith.addf %33, %40 : tensor<?x?x4096xf32>
    %42 = moe.rms_norm %41, %arg37 {epsilon = 9.9999997473787516E-6 : f64} : (tensor<?x?x4096xf32>, tensor<4096xf32>) -> tensor<?x?x4096xf32>
    %43 = moe.linear %42, %arg33 : (tensor<?x?x4096xf32>, tensor<8x4096xf32>) -> tensor<?x?x8xf32>
    %gates_47, %experts_48 = moe.router %43 {k = 2 : i64, load_balancing = #moe.load_balancing<aux_loss>} : (tensor<?x?x8xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi64>)
    %result_49 = moe.experts %42, %gates_47, %experts_48, %arg34, %arg35 {gate_up_layout = #moe.gate_up_layout<concatenated>} : (tensor<?x?x4096xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi64>, tensor<8x28672x4096xf32>, tensor<8x4096x14336xf32>) -> tensor<?x?x4096xf32>
    %44 = arith.addf %41, %result_49 : tensor<?x?x4096xf32>
    %45 = moe.rms_norm %44, %arg38 {epsilon = 9.9999997473787516E-6 : f64} : (tensor<?x?x4096xf32>, tensor<4096xf32>) -> tensor<?x?x4096xf32>
    %46 = moe.lm_head %45, %arg39 : (tensor<?x?x4096xf32>, tensor<32000x4096xf32>) -> tensor<?x?x32000xf32>
    return %46 : tensor<?x?x32000xf32>
  }
}
