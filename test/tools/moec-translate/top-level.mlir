// RUN: not moec-translate %s --moe-to-cuda --no-implicit-module 2>&1 | FileCheck %s --check-prefix=TRAIN
// RUN: not moec-translate %s --moe-to-cuda-init --no-implicit-module 2>&1 | FileCheck %s --check-prefix=INIT

// Tests that the printers take a module, not another top-level op.
// TRAIN: error: --moe-to-cuda needs a module
// INIT: error: --moe-to-cuda-init needs a module
func.func @init_params(%seed: tensor<i64>) {
  return
}
