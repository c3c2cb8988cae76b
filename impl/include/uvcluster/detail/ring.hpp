#pragma once
// A FIFO on one growable circular buffer, for the queues a hand-off passes through (connections
// waiting, hand-offs in flight, ACKs owed, fds received). std::deque frees and allocates a block
// every few hundred bytes of traffic even at a constant length; a Ring allocates only when it
// grows past the longest it has been, so a steady stream of hand-offs allocates nothing.
// Erasing in the middle moves the later elements (these queues are a few entries long).
#include <bit>
#include <cstddef>
#include <iterator>
#include <memory>
#include <utility>

namespace uvcluster::detail {

template <class T>
class Ring {
 public:
  template <class R, class V>
  class Iter {
   public:
    using iterator_category = std::random_access_iterator_tag;
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    using pointer = V*;
    using reference = V&;
    Iter() = default;
    Iter(R* ring, size_t index) : ring_(ring), index_(index) {}
    reference operator*() const { return (*ring_)[index_]; }
    pointer operator->() const { return &(*ring_)[index_]; }
    reference operator[](difference_type n) const { return (*ring_)[index_ + static_cast<size_t>(n)]; }
    Iter& operator++() { return ++index_, *this; }
    Iter operator++(int) { return Iter(ring_, index_++); }
    Iter& operator--() { return --index_, *this; }
    Iter operator--(int) { return Iter(ring_, index_--); }
    Iter& operator+=(difference_type n) { return index_ += static_cast<size_t>(n), *this; }
    Iter& operator-=(difference_type n) { return index_ -= static_cast<size_t>(n), *this; }
    Iter operator+(difference_type n) const { return Iter(ring_, index_ + static_cast<size_t>(n)); }
    friend Iter operator+(difference_type n, Iter it) { return it + n; }
    Iter operator-(difference_type n) const { return Iter(ring_, index_ - static_cast<size_t>(n)); }
    difference_type operator-(const Iter& o) const {
      return static_cast<difference_type>(index_) - static_cast<difference_type>(o.index_);
    }
    bool operator==(const Iter& o) const { return index_ == o.index_; }
    auto operator<=>(const Iter& o) const { return index_ <=> o.index_; }
    size_t index() const { return index_; }

   private:
    R* ring_ = nullptr;
    size_t index_ = 0;
  };
  using iterator = Iter<Ring, T>;
  using const_iterator = Iter<const Ring, const T>;

  Ring() = default;
  explicit Ring(size_t capacity) { reserve(capacity); }
  Ring(Ring&& o) noexcept
      : slots_(std::exchange(o.slots_, nullptr)),
        capacity_(std::exchange(o.capacity_, 0)),
        head_(std::exchange(o.head_, 0)),
        size_(std::exchange(o.size_, 0)) {}
  Ring& operator=(Ring&& o) noexcept {
    if (this != &o) {
      clear();
      release();
      slots_ = std::exchange(o.slots_, nullptr);
      capacity_ = std::exchange(o.capacity_, 0);
      head_ = std::exchange(o.head_, 0);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring() {
    clear();
    release();
  }

  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  T& operator[](size_t i) { return slots_[slot(i)]; }
  const T& operator[](size_t i) const { return slots_[slot(i)]; }
  T& front() { return (*this)[0]; }
  const T& front() const { return (*this)[0]; }
  T& back() { return (*this)[size_ - 1]; }
  const T& back() const { return (*this)[size_ - 1]; }
  iterator begin() { return iterator(this, 0); }
  iterator end() { return iterator(this, size_); }
  const_iterator begin() const { return const_iterator(this, 0); }
  const_iterator end() const { return const_iterator(this, size_); }

  void reserve(size_t n) {
    if (n > capacity_) grow(n);
  }
  template <class... Args>
  T& emplace_back(Args&&... args) {
    if (size_ == capacity_) grow(capacity_ ? capacity_ * 2 : 4);
    T* p = std::construct_at(&slots_[slot(size_)], std::forward<Args>(args)...);
    ++size_;
    return *p;
  }
  void push_back(T&& value) { emplace_back(std::move(value)); }
  void push_back(const T& value) { emplace_back(value); }
  void push_front(T value) {
    if (size_ == capacity_) grow(capacity_ ? capacity_ * 2 : 4);
    head_ = (head_ + capacity_ - 1) & (capacity_ - 1);
    std::construct_at(&slots_[head_], std::move(value));
    ++size_;
  }
  void pop_front() {
    std::destroy_at(&slots_[head_]);
    head_ = (head_ + 1) & (capacity_ - 1);
    --size_;
  }
  void pop_back() {
    std::destroy_at(&back());
    --size_;
  }
  // Removes one element; the later ones move up (the front: none move). Returns the position
  // after it.
  iterator erase(const_iterator pos) {
    size_t i = pos.index();
    if (i == 0) {
      pop_front();
      return iterator(this, 0);
    }
    for (size_t j = i; j + 1 < size_; ++j) (*this)[j] = std::move((*this)[j + 1]);
    pop_back();
    return iterator(this, i);
  }
  iterator erase(iterator pos) { return erase(const_iterator(this, pos.index())); }
  void clear() {
    while (size_ > 0) pop_front();
    head_ = 0;
  }

 private:
  size_t slot(size_t i) const { return (head_ + i) & (capacity_ - 1); }  // capacity: a power of 2
  void grow(size_t n) {
    n = std::bit_ceil(n);
    std::allocator<T> alloc;
    T* next = alloc.allocate(n);
    for (size_t i = 0; i < size_; ++i) {
      std::construct_at(&next[i], std::move((*this)[i]));
      std::destroy_at(&(*this)[i]);
    }
    release();
    slots_ = next;
    capacity_ = n;
    head_ = 0;
  }
  void release() {
    if (slots_) std::allocator<T>().deallocate(slots_, capacity_);
    slots_ = nullptr;
    capacity_ = 0;
  }

  T* slots_ = nullptr;
  size_t capacity_ = 0;
  size_t head_ = 0;
  size_t size_ = 0;
};

}  // namespace uvcluster::detail
