// A forward with no moe ops: `moec plan` must refuse it.
func.func @forward(%x: tensor<2x4xf32> {moe.parameter = "w"}) -> tensor<2x4xf32> {
  return %x : tensor<2x4xf32>
}
