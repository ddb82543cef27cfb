#include "cpu_graph.h"

#include "conv3x3_c24.h"
#include "max_pool.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <algorithm>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

namespace unetseg::runner {
namespace {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

const c10::Symbol kConv = c10::Symbol::fromQualString("aten::conv2d");
const c10::Symbol kCat = c10::Symbol::fromQualString("aten::cat");
const c10::Symbol kReluInPlace = c10::Symbol::fromQualString("aten::relu_");
const c10::Symbol kRelu = c10::Symbol::fromQualString("aten::relu");
const c10::Symbol kHardtanhInPlace = c10::Symbol::fromQualString("aten::hardtanh_");
const c10::Symbol kHardtanh = c10::Symbol::fromQualString("aten::hardtanh");
const c10::Symbol kFused = c10::Symbol::fromQualString("mkldnn::_convolution_pointwise");
const c10::Symbol kMaxPool = c10::Symbol::fromQualString("aten::max_pool2d");
const c10::Symbol kSlice = c10::Symbol::fromQualString("aten::slice");
const c10::Symbol kPad = c10::Symbol::fromQualString("aten::pad");
const c10::Symbol kMaxPool2x2 = c10::Symbol::fromQualString("unetseg::_max_pool_2x2");
const c10::Symbol kConv24 = c10::Symbol::fromQualString("unetseg::_conv3x3_c24");

// What a U-Net's frozen graph holds: tensor ops that run in any floating dtype, and the integer and
// list arithmetic of its padding and cropping. A graph with anything else is left to autocast.
const std::unordered_set<std::string>& known_ops() {
  static const std::unordered_set<std::string> ops{
      "aten::conv2d", "aten::conv_transpose2d", "aten::relu_", "aten::relu", "aten::hardtanh_",
      "aten::hardtanh", "aten::max_pool2d",
      "aten::cat", "aten::pad", "aten::slice", "aten::size", "aten::dim", "aten::len", "aten::__getitem__",
      "aten::append", "aten::add", "aten::sub", "aten::mul", "aten::floordiv", "aten::remainder",
      "aten::neg", "aten::eq", "aten::ne", "aten::lt", "aten::le", "aten::gt", "aten::ge", "aten::__not__",
      "aten::Bool", "aten::Int", "prim::Constant", "prim::ListConstruct", "prim::ListUnpack",
      "prim::TupleConstruct", "prim::TupleUnpack", "prim::If", "prim::Loop", "prim::RaiseException",
      "prim::Uninitialized", "prim::unchecked_cast", "aten::format", "aten::__is__", "aten::__isnot__"};
  return ops;
}

bool has_op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchema({name, overload}).has_value();
}

// Every node of the graph, nested blocks included.
std::vector<Node*> all_nodes(const std::shared_ptr<Graph>& graph) {
  std::vector<Node*> nodes;
  std::vector<torch::jit::Block*> blocks{graph->block()};
  while (!blocks.empty()) {
    torch::jit::Block* block = blocks.back();
    blocks.pop_back();
    for (Node* n : block->nodes()) {
      nodes.push_back(n);
      for (torch::jit::Block* b : n->blocks()) blocks.push_back(b);
    }
  }
  return nodes;
}

bool rewritable(const std::shared_ptr<Graph>& graph) {
  for (Node* n : all_nodes(graph)) {
    if (!known_ops().count(n->kind().toQualString())) return false;
    // conv2d's default overload: padding as numbers, not the string "same"
    if (n->kind() == kConv && (!n->maybeSchema() || !n->schema().overload_name().empty())) return false;
  }
  return true;
}

bool is_relu(Node* n) { return n->kind() == kReluInPlace || n->kind() == kRelu; }
bool is_hardtanh(Node* n) { return n->kind() == kHardtanhInPlace || n->kind() == kHardtanh; }

// The activation that alone uses `conv`'s output: a ReLU, or a hardtanh with constant bounds
// (MobileNetV2's ReLU6); or nullptr.
Node* sole_activation(Node* conv) {
  const auto& uses = conv->output()->uses();
  if (uses.size() != 1) return nullptr;
  Node* user = uses[0].user;
  if (is_relu(user)) return user;
  return is_hardtanh(user) && torch::jit::toIValue(user->input(1)) && torch::jit::toIValue(user->input(2)) ? user
                                                                                                         : nullptr;
}

// The two tensors `conv` convolves the concatenation of along channels, with the cat node; or
// nullptrs.
std::pair<Node*, std::array<Value*, 2>> concatenated_input(Node* conv) {
  Node* cat = conv->input(0)->node();
  if (cat->kind() != kCat || cat->output()->uses().size() != 1) return {nullptr, {}};
  Node* list = cat->input(0)->node();
  const auto dim = torch::jit::toIValue(cat->input(1));
  if (list->kind() != c10::prim::ListConstruct || list->inputs().size() != 2 || !dim || !dim->isInt() ||
      dim->toInt() != 1 || list->output()->uses().size() != 1) {
    return {nullptr, {}};
  }
  return {cat, {list->input(0), list->input(1)}};
}

// The items of `list` as `reader` sees them: a ListConstruct's inputs and then what the appends
// before `reader` add, when every append is in reader's block and before it and nothing else
// changes the list (reads: __getitem__, len); or nullopt. (A U-Net's forward keeps its skips in
// such a list.)
std::optional<std::vector<Value*>> list_items(Value* list, Node* reader) {
  if (list->node()->kind() != c10::prim::ListConstruct) return std::nullopt;
  std::vector<Node*> appends;
  for (const torch::jit::Use& use : list->uses()) {
    Node* user = use.user;
    if (user->kind() == c10::aten::__getitem__ || user->kind() == c10::aten::len) continue;
    if (user->kind() != c10::aten::append || user->owningBlock() != reader->owningBlock() || !user->isBefore(reader)) {
      return std::nullopt;
    }
    appends.push_back(user);
  }
  std::sort(appends.begin(), appends.end(), [](Node* a, Node* b) { return a->isBefore(b); });
  std::vector<Value*> items(list->node()->inputs().begin(), list->node()->inputs().end());
  for (Node* append : appends) items.push_back(append->input(1));
  return items;
}

// The value of an int the graph computes from constants, list lengths (list_items) and + and -; or
// nullopt.
std::optional<int64_t> constant_int(Value* v) {
  Node* n = v->node();
  if (const auto c = torch::jit::toIValue(v)) return c->isInt() ? std::optional<int64_t>(c->toInt()) : std::nullopt;
  if (n->kind() == c10::aten::len) {
    const auto items = list_items(n->input(0), n);
    return items ? std::optional<int64_t>(static_cast<int64_t>(items->size())) : std::nullopt;
  }
  if ((n->kind() == c10::aten::sub || n->kind() == c10::aten::add) && n->inputs().size() == 2) {
    const auto a = constant_int(n->input(0)), b = constant_int(n->input(1));
    if (!a || !b) return std::nullopt;
    return n->kind() == c10::aten::sub ? *a - *b : *a + *b;
  }
  return std::nullopt;
}

// The values of an int list the graph fixes: a constant list, or a list of constant_int items; or
// nullopt.
std::optional<std::vector<int64_t>> constant_ints(Value* v) {
  if (const auto list = torch::jit::toIValue(v)) {
    return list->isIntList() ? std::optional(list->toIntList().vec()) : std::nullopt;
  }
  if (v->node()->kind() != c10::prim::ListConstruct) return std::nullopt;
  std::vector<int64_t> out;
  for (Value* item : v->node()->inputs()) {
    const auto k = constant_int(item);
    if (!k) return std::nullopt;
    out.push_back(*k);
  }
  return out;
}

// What `list[index]` (a __getitem__ node) reads when its list and index are fixed by the graph
// (list_items, constant_int); or nullptr.
Value* list_item(Node* getitem) {
  const auto items = list_items(getitem->input(0), getitem);
  const auto index = constant_int(getitem->input(1));
  if (!items || !index) return nullptr;
  const auto size = static_cast<int64_t>(items->size());
  const int64_t i = *index < 0 ? *index + size : *index;
  return i >= 0 && i < size ? (*items)[i] : nullptr;
}

// The channel count of `v` when the graph fixes it: the output channels of the convolution that made
// it (its constant weight's first dimension), looked up through activations, crops and a list of
// skips; or -1.
int64_t known_channels(Value* v) {
  for (Node* n = v->node();; n = n->input(0)->node()) {
    if (n->kind() == c10::aten::__getitem__) {
      Value* item = list_item(n);
      if (!item) return -1;
      n = item->node();
    }
    if (n->kind() == kConv || n->kind() == kFused) {
      const auto w = torch::jit::toIValue(n->input(1));
      return w && w->isTensor() ? w->toTensor().size(0) : -1;
    }
    if (n->kind() == kConv24) return 24; // rewritten before the convolution that asks
    const bool activation = is_relu(n) || is_hardtanh(n);
    const auto dim = n->kind() == kSlice ? constant_int(n->input(1)) : std::nullopt;
    const bool crop = dim && (*dim == 2 || *dim == 3 || *dim == -2 || *dim == -1); // a 4-d tensor's rows or columns
    const auto pads = n->kind() == kPad ? torch::jit::toIValue(n->input(1)) : std::nullopt;
    const bool spatial_pad = pads && pads->isIntList() && pads->toIntList().size() <= 4;
    if (!activation && !crop && !spatial_pad) return -1;
  }
}

Value* scalars(Graph& graph, std::vector<Value*> values = {}) {
  return graph.insertNode(graph.createList(c10::OptionalType::create(c10::NumberType::get()), values))->output();
}

// The constant weights of `conv` when unetseg::_conv3x3_c24 computes it faster than oneDNN: this CPU
// is one where it wins, the weights fit it, and the convolution has stride 1, padding 1, dilation 1
// and one group; or nullopt.
std::optional<at::Tensor> conv3x3_c24_weights(Node* conv, const c10::IValue& weight) {
  using Ints = std::optional<std::vector<int64_t>>;
  const Ints ones{{1, 1}};
  if (!conv3x3_c24_wins() || !weight.isTensor() || !conv3x3_c24_fits(weight.toTensor())) return std::nullopt;
  const bool plain = constant_ints(conv->input(3)) == ones && constant_ints(conv->input(4)) == ones &&
                     constant_ints(conv->input(5)) == ones && constant_int(conv->input(6)) == std::optional<int64_t>(1);
  return plain ? std::optional(weight.toTensor()) : std::nullopt;
}

// unetseg::_conv3x3_c24 of `x` with `weight` (packed here, once) and `bias` (+ `add`) (+ ReLU).
Value* conv3x3_c24_node(Graph& graph, Value* x, const at::Tensor& weight, Value* bias, Value* add, bool relu) {
  Value* packed = graph.insertConstant(pack_conv3x3_c24(weight));
  const torch::jit::NamedValue added = add ? torch::jit::NamedValue(add) : torch::jit::NamedValue(c10::IValue());
  return graph.insert(kConv24, {x, packed, bias, added, relu});
}

// conv (+ activation) -> one oneDNN convolution with the activation as a post-op, or
// unetseg::_conv3x3_c24 (+ ReLU) where that is faster.
Value* fuse_conv(Graph& graph, Node* conv, Node* act) {
  Value *x = conv->input(0), *w = conv->input(1), *b = conv->input(2);
  Value *stride = conv->input(3), *padding = conv->input(4), *dilation = conv->input(5), *groups = conv->input(6);
  const auto weight = torch::jit::toIValue(w);
  if (const auto c24 = weight ? conv3x3_c24_weights(conv, *weight) : std::nullopt; c24 && (!act || is_relu(act))) {
    return conv3x3_c24_node(graph, x, *c24, b, nullptr, act != nullptr);
  }
  const std::string attr = !act ? "none" : is_relu(act) ? "relu" : "hardtanh";
  Value* bounds = act && !is_relu(act) ? scalars(graph, {act->input(1), act->input(2)}) : scalars(graph);
  return graph.insert(kFused, {x, w, b, padding, stride, dilation, groups, attr, bounds, c10::IValue()});
}

// The activation `act` applied in place to `x`.
Value* activate(Graph& graph, Node* act, Value* x) {
  if (is_relu(act)) return graph.insert(c10::aten::relu_, {x});
  return graph.insert(c10::aten::hardtanh_, {x, act->input(1), act->input(2)});
}

// conv(cat([a, b])) (+ activation) -> conv(a, W[:, :Ca]) then conv(b, W[:, Ca:]) + that (+ the
// activation). A ReLU joins the second convolution as a post-op only where its weights are a
// constant whose layout reads as channels-last alone (more than one input channel, a kernel larger
// than 1x1): oneDNN then always takes the fused path, whereas torch's fallback for other layouts
// (conv + add_relu) has no bfloat16 kernel. Elsewhere the activation stays an op of its own. Either
// convolution is unetseg::_conv3x3_c24 where that is faster (its own `add` and ReLU).
Value* split_conv(Graph& graph, Node* conv, Node* act, const std::array<Value*, 2>& parts) {
  Value *w = conv->input(1), *bias = conv->input(2);
  Value *stride = conv->input(3), *padding = conv->input(4), *dilation = conv->input(5), *groups = conv->input(6);
  Value *w_first = nullptr, *w_second = nullptr;
  std::optional<at::Tensor> c24_first, c24_second;
  bool unambiguous = false; // the second weights' layout reads as channels-last only
  const auto weight = torch::jit::toIValue(w);
  const int64_t known = known_channels(parts[0]);
  if (weight && weight->isTensor() && known > 0 && known < weight->toTensor().size(1)) {
    // the two parts of the weights as constants of their own, not strided views copied on every call
    const at::Tensor whole = weight->toTensor();
    const at::Tensor first = whole.slice(1, 0, known).contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor second = whole.slice(1, known).contiguous(at::MemoryFormat::ChannelsLast);
    w_first = graph.insertConstant(first);
    w_second = graph.insertConstant(second);
    unambiguous = second.dim() == 4 && second.size(1) > 1 && second.size(2) * second.size(3) > 1;
    c24_first = conv3x3_c24_weights(conv, first);
    c24_second = conv3x3_c24_weights(conv, second);
  } else {
    Value* first_channels = graph.insert(c10::aten::size, {parts[0], 1});
    w_first = graph.insert(c10::aten::slice, {w, 1, c10::IValue(), first_channels});
    w_second = graph.insert(c10::aten::slice, {w, 1, first_channels, c10::IValue()});
  }
  Value* first = c24_first ? conv3x3_c24_node(graph, parts[0], *c24_first, bias, nullptr, false)
                           : graph.insert(kFused, {parts[0], w_first, bias, padding, stride, dilation, groups,
                                                   std::string("none"), scalars(graph), c10::IValue()});
  if (c24_second && (!act || is_relu(act))) {
    return conv3x3_c24_node(graph, parts[1], *c24_second, graph.insertConstant(c10::IValue()), first, act != nullptr);
  }
  const bool fuse_relu = act && is_relu(act) && unambiguous;
  const c10::IValue unary = fuse_relu ? c10::IValue(std::string("relu")) : c10::IValue();
  Value* sum = graph.insert(kFused, {parts[1], first, w_second, c10::IValue(), padding, stride, dilation, groups,
                                     std::string("add"), 1.0, unary, scalars(graph), c10::IValue()});
  return act && !fuse_relu ? activate(graph, act, sum) : sum;
}

// Whether `pool` is a 2x2 max-pool of stride 2, without padding, dilation or ceil mode.
bool is_pool_2x2(Node* pool) {
  using Ints = std::optional<std::vector<int64_t>>;
  const Ints two{{2, 2}};
  const Ints stride = constant_ints(pool->input(2));
  const auto ceil = torch::jit::toIValue(pool->input(5));
  return constant_ints(pool->input(1)) == two && (stride == two || (stride && stride->empty())) &&
         constant_ints(pool->input(3)) == Ints{{0, 0}} && constant_ints(pool->input(4)) == Ints{{1, 1}} && ceil &&
         ceil->isBool() && !ceil->toBool();
}

} // namespace

bool specialise_for_cpu(torch::jit::Module& module, c10::ScalarType dtype) {
  if (!has_op("mkldnn::_convolution_pointwise", "") || !has_op("mkldnn::_convolution_pointwise", "binary")) {
    return false;
  }
  const std::shared_ptr<Graph> graph = module.get_method("forward").graph();
  if (!rewritable(graph)) return false;
  // floating constants in the run's dtype, and 4-d ones (convolution weights) channels-last: oneDNN's
  // convolutions would otherwise copy their weights into the activations' layout on every call
  for (Node* n : all_nodes(graph)) {
    if (n->kind() != c10::prim::Constant || !n->output()->type()->cast<c10::TensorType>()) continue;
    const at::Tensor t = n->t(c10::attr::value);
    if (!t.is_floating_point()) continue;
    const auto layout = t.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    n->t_(c10::attr::value, t.to(dtype).contiguous(layout));
    n->output()->inferTypeFrom(n->t(c10::attr::value));
  }
  // the convolutions first: the loop destroys activation nodes a list of every node would still point to
  std::vector<Node*> convs;
  for (Node* n : all_nodes(graph)) {
    if (n->kind() == kConv) convs.push_back(n);
  }
  for (Node* conv : convs) {
    Node* act = sole_activation(conv);
    const auto [cat, parts] = concatenated_input(conv);
    torch::jit::WithInsertPoint guard(conv);
    Value* fused = cat ? split_conv(*graph, conv, act, parts) : fuse_conv(*graph, conv, act);
    (act ? act : conv)->output()->replaceAllUsesWith(fused);
    if (act) act->destroy();
    conv->destroy();
  }
  // bfloat16 only: torch's float32 max-pool is fast (1024², 24 channels: 6 ms), its bfloat16 one is
  // not (23 ms, against 1.6 for unetseg::_max_pool_2x2)
  std::vector<Node*> pools;
  if (dtype == at::kBFloat16) {
    for (Node* n : all_nodes(graph)) {
      if (n->kind() == kMaxPool && is_pool_2x2(n)) pools.push_back(n);
    }
  }
  for (Node* pool : pools) {
    torch::jit::WithInsertPoint guard(pool);
    pool->output()->replaceAllUsesWith(graph->insert(kMaxPool2x2, {pool->input(0)}));
    pool->destroy();
  }
  torch::jit::EliminateDeadCode(graph);
  return true;
}

} // namespace unetseg::runner
