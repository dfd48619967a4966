//===- OnnxEvaluatorTest.cpp - Unit tests of the ONNX subgraph evaluator --===//
//
// The evaluator on small subgraphs parsed from text: operators reached
// through its table compute ONNX's values (integer division and modulo,
// casts to bool, multi-result Split and TopK, Where over broadcast masks),
// and a node it cannot evaluate fails with the operator's type and the
// node's location; axes and slice operands out of range fail naming them
// (the fuzzer's finds: a CumSum axis of 1 over a rank-1 input read past a
// tensor, ScatterND updates of another size, a Reshape target whose
// product overflows).
//
//===----------------------------------------------------------------------===//

#include "lib/Conversion/OnnxToMoe/OnnxEvaluator.h"

#include "moec/InitAll.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

#include <limits>

using namespace mlir;
using namespace moec;

namespace {

class OnnxEvaluatorTest : public ::testing::Test {
protected:
  OnnxEvaluatorTest() {
    DialectRegistry registry;
    registerAllDialects(registry);
    context.appendDialectRegistry(registry);
    context.loadAllAvailableDialects();
  }

  /// Parses `source` (one function, @f) and binds its arguments to `args`.
  func::FuncOp parse(const char *source, std::vector<HostTensor> args) {
    module = parseSourceString<ModuleOp>(source, &context);
    EXPECT_TRUE(module);
    auto func = module->lookupSymbol<func::FuncOp>("f");
    EXPECT_EQ(func.getNumArguments(), args.size());
    for (auto [arg, tensor] : llvm::zip(func.getArguments(), args))
      evaluator.bind(arg, std::move(tensor));
    return func;
  }

  /// The value of return operand `i` of `func`.
  const HostTensor *returned(func::FuncOp func, unsigned i,
                             std::string &error) {
    Operation *ret = func.getBody().front().getTerminator();
    return evaluator.evaluate(ret->getOperand(i), error);
  }

  MLIRContext context;
  OwningOpRef<ModuleOp> module;
  OnnxEvaluator evaluator;
};

HostTensor ints(std::vector<int64_t> shape, std::vector<int64_t> values) {
  HostTensor t = HostTensor::ints(std::move(shape));
  t.i64 = std::move(values);
  return t;
}

HostTensor floats(std::vector<int64_t> shape, std::vector<float> values) {
  HostTensor t = HostTensor::floats(std::move(shape));
  t.f32 = std::move(values);
  return t;
}

TEST_F(OnnxEvaluatorTest, IntegerDivisionTruncatesAndModTakesTheDivisorsSign) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%a: tensor<4xi64>, %b: tensor<4xi64>) -> (tensor<4xi64>, tensor<4xi64>, tensor<4xi64>) {
      %d = moe.onnx_node "Div"(%a, %b) : (tensor<4xi64>, tensor<4xi64>) -> tensor<4xi64>
      %m = moe.onnx_node "Mod"(%a, %b) : (tensor<4xi64>, tensor<4xi64>) -> tensor<4xi64>
      %c = moe.onnx_node "Mod"(%a, %b) {fmod = 1 : si64} : (tensor<4xi64>, tensor<4xi64>) -> tensor<4xi64>
      return %d, %m, %c : tensor<4xi64>, tensor<4xi64>, tensor<4xi64>
    })mlir",
                         {ints({4}, {7, -7, 7, 5}), ints({4}, {2, 2, -2, 0})});
  std::string error;
  const HostTensor *div = returned(f, 0, error);
  ASSERT_TRUE(div) << error;
  EXPECT_EQ(div->i64, (std::vector<int64_t>{3, -3, -3, 0}));
  const HostTensor *mod = returned(f, 1, error);
  ASSERT_TRUE(mod) << error;
  EXPECT_EQ(mod->i64, (std::vector<int64_t>{1, 1, -1, 0}));
  const HostTensor *fmod = returned(f, 2, error);
  ASSERT_TRUE(fmod) << error;
  EXPECT_FALSE(fmod->isFloat());
  EXPECT_EQ(fmod->i64[0], 1);
  EXPECT_EQ(fmod->i64[1], -1);
  EXPECT_EQ(fmod->i64[2], 1);
}

TEST_F(OnnxEvaluatorTest, CausalMaskFromShapeRangeAndWhere) {
  // The mask construction of a dynamic-shape export: positions from the
  // input's shape, j > i compared with broadcasting, then Where.
  func::FuncOp f = parse(R"mlir(
    func.func @f(%ids: tensor<1x?xi64>) -> tensor<?x?xf32> {
      %s = moe.onnx_node "Shape"(%ids) {start = 1 : si64} : (tensor<1x?xi64>) -> tensor<1xi64>
      %zero = arith.constant dense<0> : tensor<i64>
      %one = arith.constant dense<1> : tensor<i64>
      %axes = arith.constant dense<0> : tensor<1xi64>
      %n = moe.onnx_node "Squeeze"(%s, %axes) : (tensor<1xi64>, tensor<1xi64>) -> tensor<i64>
      %r = moe.onnx_node "Range"(%zero, %n, %one) : (tensor<i64>, tensor<i64>, tensor<i64>) -> tensor<?xi64>
      %col = moe.onnx_node "Unsqueeze"(%r, %axes) : (tensor<?xi64>, tensor<1xi64>) -> tensor<1x?xi64>
      %last = arith.constant dense<1> : tensor<1xi64>
      %row = moe.onnx_node "Unsqueeze"(%r, %last) : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
      %future = moe.onnx_node "Greater"(%col, %row) : (tensor<1x?xi64>, tensor<?x1xi64>) -> tensor<?x?xi1>
      %neg = arith.constant dense<-1.0e+09> : tensor<f32>
      %keep = arith.constant dense<0.0> : tensor<f32>
      %mask = moe.onnx_node "Where"(%future, %neg, %keep) : (tensor<?x?xi1>, tensor<f32>, tensor<f32>) -> tensor<?x?xf32>
      return %mask : tensor<?x?xf32>
    })mlir",
                         {HostTensor::ints({1, 3})});
  std::string error;
  const HostTensor *mask = returned(f, 0, error);
  ASSERT_TRUE(mask) << error;
  EXPECT_EQ(mask->shape, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(mask->f32, (std::vector<float>{0, -1e9f, -1e9f, 0, 0, -1e9f, 0,
                                           0, 0}));
}

TEST_F(OnnxEvaluatorTest, MultiResultOperatorsBindEveryResult) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<2x3xf32>) -> (tensor<2x2xf32>, tensor<2x1xf32>, tensor<2x2xf32>, tensor<2x2xi64>, tensor<2x3xi1>) {
      %a, %b = moe.onnx_node "Split"(%x) {axis = 1 : si64} : (tensor<2x3xf32>) -> (tensor<2x2xf32>, tensor<2x1xf32>)
      %k = arith.constant dense<2> : tensor<1xi64>
      %v, %i = moe.onnx_node "TopK"(%x, %k) : (tensor<2x3xf32>, tensor<1xi64>) -> (tensor<2x2xf32>, tensor<2x2xi64>)
      %nz = moe.onnx_node "Cast"(%x) {to = 9 : si64} : (tensor<2x3xf32>) -> tensor<2x3xi1>
      return %a, %b, %v, %i, %nz : tensor<2x2xf32>, tensor<2x1xf32>, tensor<2x2xf32>, tensor<2x2xi64>, tensor<2x3xi1>
    })mlir",
                         {floats({2, 3}, {1, 3, 3, 0, -2, 5})});
  std::string error;
  std::vector<const HostTensor *> out;
  for (unsigned i = 0; i < 5; ++i) {
    out.push_back(returned(f, i, error));
    ASSERT_TRUE(out.back()) << error;
  }
  EXPECT_EQ(out[0]->f32, (std::vector<float>{1, 3, 0, -2}));
  EXPECT_EQ(out[1]->f32, (std::vector<float>{3, 5}));
  // Ties keep the lower index first.
  EXPECT_EQ(out[2]->f32, (std::vector<float>{3, 3, 5, 0}));
  EXPECT_EQ(out[3]->i64, (std::vector<int64_t>{1, 2, 2, 0}));
  EXPECT_EQ(out[4]->i64, (std::vector<int64_t>{1, 1, 1, 0, 1, 1}));
}

TEST_F(OnnxEvaluatorTest, UnknownOperatorNamesItsTypeAndNode) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {
      %e = moe.onnx_node "Erf"(%x) : (tensor<4xf32>) -> tensor<4xf32> loc("erf_3"("m.onnx":3:1))
      %y = moe.onnx_node "Add"(%e, %x) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32> loc("add_4"("m.onnx":4:1))
      return %y : tensor<4xf32>
    })mlir",
                         {HostTensor::floats({4})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "no evaluation rule for ONNX 'Erf' at node "
                   "loc(\"erf_3\"(\"m.onnx\":3:1))");
}

TEST_F(OnnxEvaluatorTest, OperatorOfAnotherDomainNamesItsDomain) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {
      %y = moe.onnx_node "Softmax"(%x) {domain = "com.microsoft"} : (tensor<4xf32>) -> tensor<4xf32> loc("sm_2"("m.onnx":2:1))
      return %y : tensor<4xf32>
    })mlir",
                         {HostTensor::floats({4})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "no evaluation rule for ONNX 'Softmax' of domain "
                   "'com.microsoft' at node loc(\"sm_2\"(\"m.onnx\":2:1))");
}

TEST_F(OnnxEvaluatorTest, NodeWithTooFewInputsFails) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<4xf32>) -> tensor<2x2xf32> {
      %y = moe.onnx_node "Reshape"(%x) : (tensor<4xf32>) -> tensor<2x2xf32> loc("r_5"("m.onnx":5:1))
      return %y : tensor<2x2xf32>
    })mlir",
                         {HostTensor::floats({4})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "it has 1 input, but ONNX 'Reshape' takes 2 at node "
                   "loc(\"r_5\"(\"m.onnx\":5:1))");
}

TEST_F(OnnxEvaluatorTest, NodeWithMoreInputsThanItsRuleReadsFails) {
  // Max of three: ONNX allows it, the rule evaluates two; the third would
  // be ignored.
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<2xf32>) -> tensor<2xf32> {
      %y = moe.onnx_node "Max"(%x, %x, %x) : (tensor<2xf32>, tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32> loc("m_3"("m.onnx":3:1))
      return %y : tensor<2xf32>
    })mlir",
                         {HostTensor::floats({2})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "it has 3 inputs, but ONNX 'Max' takes 2 in moec (ONNX "
                   "allows any number; moec evaluates two) at node "
                   "loc(\"m_3\"(\"m.onnx\":3:1))");
  EXPECT_EQ(OnnxEvaluator::countProblem("", "Concat", 7, 1), std::nullopt);
  EXPECT_EQ(OnnxEvaluator::countProblem("", "TopK", 2, 3),
            "it has 3 outputs, but ONNX 'TopK' gives 1 to 2");
  EXPECT_EQ(OnnxEvaluator::countProblem("com.microsoft", "MoE", 30, 1),
            std::nullopt);
}

TEST_F(OnnxEvaluatorTest, AxesOutOfRangeFailWithTheAxisAndRank) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<4xi32>, %axis: tensor<i64>, %starts: tensor<1xi64>, %steps: tensor<1xi64>) -> (tensor<4xi32>, tensor<8xi32>, tensor<4xi32>, tensor<4xi32>) {
      %c = moe.onnx_node "CumSum"(%x, %axis) : (tensor<4xi32>, tensor<i64>) -> tensor<4xi32> loc("c_1"("m.onnx":1:1))
      %j = moe.onnx_node "Concat"(%x, %x) {axis = -2 : i64} : (tensor<4xi32>, tensor<4xi32>) -> tensor<8xi32> loc("j_2"("m.onnx":2:1))
      %s = moe.onnx_node "Slice"(%x, %starts, %starts, %starts, %steps) : (tensor<4xi32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<4xi32> loc("s_3"("m.onnx":3:1))
      %r = moe.onnx_node "ReduceSum"(%x, %axis) : (tensor<4xi32>, tensor<i64>) -> tensor<4xi32> loc("r_4"("m.onnx":4:1))
      return %c, %j, %s, %r : tensor<4xi32>, tensor<8xi32>, tensor<4xi32>, tensor<4xi32>
    })mlir",
                         {ints({4}, {1, 2, 3, 4}), ints({}, {1}), ints({1}, {0}),
                          ints({1}, {0})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "axis 1 is out of range for rank 1 at node "
                   "loc(\"c_1\"(\"m.onnx\":1:1))");
  EXPECT_FALSE(returned(f, 1, error));
  EXPECT_EQ(error, "axis -2 is out of range for rank 1 at node "
                   "loc(\"j_2\"(\"m.onnx\":2:1))");
  EXPECT_FALSE(returned(f, 2, error));
  EXPECT_EQ(error, "a step is 0 at node loc(\"s_3\"(\"m.onnx\":3:1))");
  EXPECT_FALSE(returned(f, 3, error));
  EXPECT_EQ(error, "axis 1 is out of range for rank 1 at node "
                   "loc(\"r_4\"(\"m.onnx\":4:1))");
}

TEST_F(OnnxEvaluatorTest, ScatterNDUpdatesAndIndexTuplesMustAgree) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<4xi64>, %i: tensor<2x1xi64>, %u: tensor<3xi64>, %deep: tensor<1x2xi64>) -> (tensor<4xi64>, tensor<4xi64>) {
      %s = moe.onnx_node "ScatterND"(%x, %i, %u) : (tensor<4xi64>, tensor<2x1xi64>, tensor<3xi64>) -> tensor<4xi64> loc("s_1"("m.onnx":1:1))
      %d = moe.onnx_node "ScatterND"(%x, %deep, %u) : (tensor<4xi64>, tensor<1x2xi64>, tensor<3xi64>) -> tensor<4xi64> loc("d_2"("m.onnx":2:1))
      return %s, %d : tensor<4xi64>, tensor<4xi64>
    })mlir",
                         {ints({4}, {0, 0, 0, 0}), ints({2, 1}, {0, 3}),
                          ints({3}, {7, 8, 9}), ints({1, 2}, {0, 0})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "ScatterND updates [3] do not hold 2 slices of 1 elements "
                   "at node loc(\"s_1\"(\"m.onnx\":1:1))");
  EXPECT_FALSE(returned(f, 1, error));
  EXPECT_EQ(error, "ScatterND index tuples of shape [1, 2] do not index a "
                   "tensor of rank 1 at node loc(\"d_2\"(\"m.onnx\":2:1))");
}

TEST_F(OnnxEvaluatorTest, ReshapeTargetsThatOverflowFail) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<4xf32>, %shape: tensor<3xi64>) -> tensor<?x?x?xf32> {
      %y = moe.onnx_node "Reshape"(%x, %shape) : (tensor<4xf32>, tensor<3xi64>) -> tensor<?x?x?xf32> loc("r_1"("m.onnx":1:1))
      return %y : tensor<?x?x?xf32>
    })mlir",
                         {HostTensor::floats({4}),
                          ints({3}, {9151314442816847874, 16777215, -1})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "Reshape target [9151314442816847874, 16777215, -1] is not "
                   "a shape of at most 2^63 elements at node "
                   "loc(\"r_1\"(\"m.onnx\":1:1))");
}

TEST_F(OnnxEvaluatorTest, TransposeAndRangeOperandsAreChecked) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<2x3xf32>, %start: tensor<i64>, %delta: tensor<i64>) -> (tensor<3x2xf32>, tensor<?xi64>) {
      %t = moe.onnx_node "Transpose"(%x) {perm = array<i64: 0, 0>} : (tensor<2x3xf32>) -> tensor<3x2xf32> loc("t_1"("m.onnx":1:1))
      %r = moe.onnx_node "Range"(%start, %start, %delta) : (tensor<i64>, tensor<i64>, tensor<i64>) -> tensor<?xi64> loc("r_2"("m.onnx":2:1))
      return %t, %r : tensor<3x2xf32>, tensor<?xi64>
    })mlir",
                         {HostTensor::floats({2, 3}), ints({}, {1}),
                          ints({}, {0})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "Transpose perm [0, 0] is not a permutation of the 2 "
                   "dimensions at node loc(\"t_1\"(\"m.onnx\":1:1))");
  EXPECT_FALSE(returned(f, 1, error));
  EXPECT_NE(error.find("Range from 1 to 1 by 0 is not a tensor of at most"),
            std::string::npos)
      << error;
}

// Concat read its operands with the first one's rank and sizes (the
// onnx-import fuzz target's find: a mutated model concatenating a rank-3
// and a rank-2 tensor read past the second's shape).
TEST_F(OnnxEvaluatorTest, ConcatOperandsMustAgreeOffTheAxis) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%a: tensor<2x3xf32>, %b: tensor<3xf32>, %c: tensor<2x4xf32>, %d: tensor<1x3xf32>) -> (tensor<?x?xf32>, tensor<?x?xf32>, tensor<3x3xf32>) {
      %r = moe.onnx_node "Concat"(%a, %b) {axis = 0 : i64} : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<?x?xf32> loc("c_1"("m.onnx":1:1))
      %s = moe.onnx_node "Concat"(%a, %c) {axis = 0 : i64} : (tensor<2x3xf32>, tensor<2x4xf32>) -> tensor<?x?xf32> loc("c_2"("m.onnx":2:1))
      %t = moe.onnx_node "Concat"(%a, %d) {axis = 0 : i64} : (tensor<2x3xf32>, tensor<1x3xf32>) -> tensor<3x3xf32> loc("c_3"("m.onnx":3:1))
      return %r, %s, %t : tensor<?x?xf32>, tensor<?x?xf32>, tensor<3x3xf32>
    })mlir",
                         {floats({2, 3}, {1, 2, 3, 4, 5, 6}), floats({3}, {0, 0, 0}),
                          HostTensor::floats({2, 4}), floats({1, 3}, {7, 8, 9})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "Concat on axis 0 of operands [2, 3] and [3]: they differ "
                   "off the axis at node loc(\"c_1\"(\"m.onnx\":1:1))");
  EXPECT_FALSE(returned(f, 1, error));
  EXPECT_EQ(error, "Concat on axis 0 of operands [2, 3] and [2, 4]: they "
                   "differ off the axis at node loc(\"c_2\"(\"m.onnx\":2:1))");
  const HostTensor *t = returned(f, 2, error);
  ASSERT_TRUE(t) << error;
  EXPECT_EQ(t->shape, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(t->f32, (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

// A Concat checked its operands but not its result, so two tensors within
// the 2^24-element limit gave a larger one, and the Sin and Cos of a
// mutated rotary table then computed 22 million elements each (the
// onnx-import fuzz target's timeout, test/fuzz/onnx-import-slow: 4.8 s to
// raise). Every rule's result is held to the limit now.
TEST_F(OnnxEvaluatorTest, ResultsPastTheElementLimitFail) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%a: tensor<8388609xi64>) -> tensor<16777218xi64> {
      %r = moe.onnx_node "Concat"(%a, %a) {axis = 0 : i64} : (tensor<8388609xi64>, tensor<8388609xi64>) -> tensor<16777218xi64> loc("c_1"("m.onnx":1:1))
      return %r : tensor<16777218xi64>
    })mlir",
                         {HostTensor::ints({8388609})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "the result of ONNX 'Concat': a tensor of shape [16777218] "
                   "is not one to evaluate (sizes from 0, at most 2^24 "
                   "elements) at node loc(\"c_1\"(\"m.onnx\":1:1))");
}

// Each result within the limit, but three of them past it in all: a fuzzed
// model chained such operators to 190 million elements (3 s to raise).
TEST_F(OnnxEvaluatorTest, EvaluationsPastTheTotalLimitFail) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%a: tensor<6000000xi64>) -> (tensor<6000000xi64>, tensor<6000000xi64>) {
      %b = moe.onnx_node "Neg"(%a) : (tensor<6000000xi64>) -> tensor<6000000xi64> loc("n_1"("m.onnx":1:1))
      %c = moe.onnx_node "Neg"(%b) : (tensor<6000000xi64>) -> tensor<6000000xi64> loc("n_2"("m.onnx":2:1))
      %d = moe.onnx_node "Neg"(%c) : (tensor<6000000xi64>) -> tensor<6000000xi64> loc("n_3"("m.onnx":3:1))
      return %c, %d : tensor<6000000xi64>, tensor<6000000xi64>
    })mlir",
                         {HostTensor::ints({6000000})});
  std::string error;
  EXPECT_TRUE(returned(f, 0, error)) << error;
  EXPECT_FALSE(returned(f, 1, error));
  EXPECT_EQ(error, "evaluating ONNX 'Neg' would bring the elements computed "
                   "to 18000000, past 2^24 in all at node "
                   "loc(\"n_3\"(\"m.onnx\":3:1))");
}

// Split took its sizes from the model unchecked: fewer sizes than results
// were read past their end, sizes adding up to more than the dimension read
// past the input (and equal parts of a dimension smaller than the number of
// results gave the last one a negative size).
TEST_F(OnnxEvaluatorTest, SplitSizesMustCoverTheDimension) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<4xf32>, %one: tensor<1xi64>, %big: tensor<2xi64>, %ok: tensor<2xi64>, %y: tensor<1xf32>) -> (tensor<?xf32>, tensor<?xf32>, tensor<?xf32>, tensor<1xf32>) {
      %a:2 = moe.onnx_node "Split"(%x, %one) : (tensor<4xf32>, tensor<1xi64>) -> (tensor<?xf32>, tensor<?xf32>) loc("s_1"("m.onnx":1:1))
      %b:2 = moe.onnx_node "Split"(%x, %big) : (tensor<4xf32>, tensor<2xi64>) -> (tensor<?xf32>, tensor<?xf32>) loc("s_2"("m.onnx":2:1))
      %c:3 = moe.onnx_node "Split"(%y) : (tensor<1xf32>) -> (tensor<?xf32>, tensor<?xf32>, tensor<?xf32>) loc("s_3"("m.onnx":3:1))
      %d:2 = moe.onnx_node "Split"(%x, %ok) : (tensor<4xf32>, tensor<2xi64>) -> (tensor<1xf32>, tensor<3xf32>) loc("s_4"("m.onnx":4:1))
      return %a#0, %b#0, %c#0, %d#0 : tensor<?xf32>, tensor<?xf32>, tensor<?xf32>, tensor<1xf32>
    })mlir",
                         {floats({4}, {1, 2, 3, 4}), ints({1}, {2}),
                          ints({2}, {2, 3}), ints({2}, {1, 3}),
                          floats({1}, {5})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "Split of dimension 0 of [4] into 2 results of sizes [2] "
                   "at node loc(\"s_1\"(\"m.onnx\":1:1))");
  EXPECT_FALSE(returned(f, 1, error));
  EXPECT_EQ(error, "Split of dimension 0 of [4] into 2 results of sizes "
                   "[2, 3] at node loc(\"s_2\"(\"m.onnx\":2:1))");
  EXPECT_FALSE(returned(f, 2, error));
  EXPECT_EQ(error, "Split of dimension 0 of [1] into 3 results of sizes "
                   "[1, 1, -1] at node loc(\"s_3\"(\"m.onnx\":3:1))");
  const HostTensor *d = returned(f, 3, error);
  ASSERT_TRUE(d) << error;
  EXPECT_EQ(d->f32, (std::vector<float>{1}));
}

// Floats read as integers (a Reshape target, a Range's length) and integer
// results past int64 (Abs of its minimum) were cast with undefined
// behaviour (the onnx-import fuzz target's find, UBSan: -3.4e38 as a
// Reshape target); they saturate now, and what reads them refuses the
// result.
TEST_F(OnnxEvaluatorTest, FloatsReadAsIntegersSaturate) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<4xf32>, %shape: tensor<2xf32>, %zero: tensor<f32>, %far: tensor<f32>, %one: tensor<f32>, %min: tensor<1xi64>) -> (tensor<?x?xf32>, tensor<?xf32>, tensor<1xi64>) {
      %r = moe.onnx_node "Reshape"(%x, %shape) : (tensor<4xf32>, tensor<2xf32>) -> tensor<?x?xf32> loc("r_1"("m.onnx":1:1))
      %g = moe.onnx_node "Range"(%zero, %far, %one) : (tensor<f32>, tensor<f32>, tensor<f32>) -> tensor<?xf32> loc("g_2"("m.onnx":2:1))
      %a = moe.onnx_node "Abs"(%min) : (tensor<1xi64>) -> tensor<1xi64> loc("a_3"("m.onnx":3:1))
      return %r, %g, %a : tensor<?x?xf32>, tensor<?xf32>, tensor<1xi64>
    })mlir",
                         {HostTensor::floats({4}), floats({2}, {-3.4e38f, 2}),
                          floats({}, {0}), floats({}, {-1e30f}),
                          floats({}, {1}),
                          ints({1}, {std::numeric_limits<int64_t>::min()})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "Reshape target [-9223372036854775808, 2] is not a shape "
                   "of at most 2^63 elements at node "
                   "loc(\"r_1\"(\"m.onnx\":1:1))");
  const HostTensor *g = returned(f, 1, error);
  ASSERT_TRUE(g) << error;
  EXPECT_EQ(g->shape, (std::vector<int64_t>{0}));
  const HostTensor *a = returned(f, 2, error);
  ASSERT_TRUE(a) << error;
  EXPECT_EQ(a->i64, (std::vector<int64_t>{std::numeric_limits<int64_t>::max()}));
}

// TopK's k and ConstantOfShape's shape come from the model: a k past the
// row's width was read past it and allocated (the onnx-import fuzz
// target's find: AddressSanitizer out of memory), a negative shape or a
// value of no elements read nothing valid.
TEST_F(OnnxEvaluatorTest, TopKAndConstantOfShapeOperandsAreChecked) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<2x4xf32>, %k: tensor<1xi64>, %two: tensor<2xi64>, %shape: tensor<2xi64>) -> (tensor<2x?xf32>, tensor<2x?xf32>, tensor<?x?xf32>, tensor<?x?xf32>) {
      %v:2 = moe.onnx_node "TopK"(%x, %k) : (tensor<2x4xf32>, tensor<1xi64>) -> (tensor<2x?xf32>, tensor<2x?xi64>) loc("t_1"("m.onnx":1:1))
      %w:2 = moe.onnx_node "TopK"(%x, %two) : (tensor<2x4xf32>, tensor<2xi64>) -> (tensor<2x?xf32>, tensor<2x?xi64>) loc("t_2"("m.onnx":2:1))
      %c = moe.onnx_node "ConstantOfShape"(%shape) : (tensor<2xi64>) -> tensor<?x?xf32> loc("c_3"("m.onnx":3:1))
      %e = moe.onnx_node "ConstantOfShape"(%two) {value = dense<> : tensor<0xf32>} : (tensor<2xi64>) -> tensor<?x?xf32> loc("c_4"("m.onnx":4:1))
      return %v#0, %w#0, %c, %e : tensor<2x?xf32>, tensor<2x?xf32>, tensor<?x?xf32>, tensor<?x?xf32>
    })mlir",
                         {floats({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}),
                          ints({1}, {17179869184}), ints({2}, {1, 2}),
                          ints({2}, {-1, 4})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "TopK k [17179869184] is not one value in [0, 4] at node "
                   "loc(\"t_1\"(\"m.onnx\":1:1))");
  EXPECT_FALSE(returned(f, 1, error));
  EXPECT_EQ(error, "TopK k [1, 2] is not one value in [0, 4] at node "
                   "loc(\"t_2\"(\"m.onnx\":2:1))");
  EXPECT_FALSE(returned(f, 2, error));
  EXPECT_EQ(error, "a tensor of shape [-1, 4] is not one to evaluate (sizes "
                   "from 0, at most 2^24 elements) at node "
                   "loc(\"c_3\"(\"m.onnx\":3:1))");
  EXPECT_FALSE(returned(f, 3, error));
  EXPECT_EQ(error, "ConstantOfShape value [0] is not one element at node "
                   "loc(\"c_4\"(\"m.onnx\":4:1))");
}

// Unsqueeze inserted a repeated axis past the shape's end (the onnx-import
// fuzz target's find: AddressSanitizer, axes [1, 1] of a scalar).
TEST_F(OnnxEvaluatorTest, UnsqueezeAxesMustNotRepeat) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%x: tensor<f32>, %axes: tensor<2xi64>, %ok: tensor<2xi64>) -> (tensor<?x?xf32>, tensor<1x1xf32>) {
      %u = moe.onnx_node "Unsqueeze"(%x, %axes) : (tensor<f32>, tensor<2xi64>) -> tensor<?x?xf32> loc("u_1"("m.onnx":1:1))
      %v = moe.onnx_node "Unsqueeze"(%x, %ok) : (tensor<f32>, tensor<2xi64>) -> tensor<1x1xf32> loc("u_2"("m.onnx":2:1))
      return %u, %v : tensor<?x?xf32>, tensor<1x1xf32>
    })mlir",
                         {floats({}, {3}), ints({2}, {1, 1}), ints({2}, {1, -2})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "Unsqueeze axes [1, 1] repeat an axis at node "
                   "loc(\"u_1\"(\"m.onnx\":1:1))");
  const HostTensor *v = returned(f, 1, error);
  ASSERT_TRUE(v) << error;
  EXPECT_EQ(v->shape, (std::vector<int64_t>{1, 1}));
}

// Gemm read operands of any rank as matrices (transA of a vector read its
// shape's second entry) and C of any shape (one that does not broadcast to
// the product was read past its end).
TEST_F(OnnxEvaluatorTest, GemmOperandsAreChecked) {
  func::FuncOp f = parse(R"mlir(
    func.func @f(%v: tensor<2xf32>, %m: tensor<2x2xf32>, %c: tensor<3xf32>, %r: tensor<2x1xf32>) -> (tensor<2x2xf32>, tensor<2x2xf32>, tensor<2x2xf32>) {
      %a = moe.onnx_node "Gemm"(%v, %m) {transA = 1 : si64} : (tensor<2xf32>, tensor<2x2xf32>) -> tensor<2x2xf32> loc("g_1"("m.onnx":1:1))
      %b = moe.onnx_node "Gemm"(%m, %m, %c) : (tensor<2x2xf32>, tensor<2x2xf32>, tensor<3xf32>) -> tensor<2x2xf32> loc("g_2"("m.onnx":2:1))
      %d = moe.onnx_node "Gemm"(%m, %m, %r) {beta = 2.0 : f32} : (tensor<2x2xf32>, tensor<2x2xf32>, tensor<2x1xf32>) -> tensor<2x2xf32> loc("g_3"("m.onnx":3:1))
      return %a, %b, %d : tensor<2x2xf32>, tensor<2x2xf32>, tensor<2x2xf32>
    })mlir",
                         {floats({2}, {1, 2}), floats({2, 2}, {1, 2, 3, 4}),
                          floats({3}, {1, 1, 1}), floats({2, 1}, {10, 20})});
  std::string error;
  EXPECT_FALSE(returned(f, 0, error));
  EXPECT_EQ(error, "Gemm of shapes [2] and [2, 2] needs matrices at node "
                   "loc(\"g_1\"(\"m.onnx\":1:1))");
  EXPECT_FALSE(returned(f, 1, error));
  EXPECT_EQ(error, "Gemm's C [3] does not broadcast to the product's [2, 2] "
                   "at node loc(\"g_2\"(\"m.onnx\":2:1))");
  // A column C broadcasts along the rows: [[7, 10], [15, 22]] + 2 * C.
  const HostTensor *d = returned(f, 2, error);
  ASSERT_TRUE(d) << error;
  EXPECT_EQ(d->f32, (std::vector<float>{27, 30, 55, 62}));
}

} // namespace
