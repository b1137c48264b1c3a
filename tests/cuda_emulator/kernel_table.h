// The CUDA emulator's kernel table: a type-erased entry per __global__ function, so a launch can
// pass its arguments as CUDA's cuLaunchKernel does (an array of pointers to the values) and
// Python can check each argument against the C type the kernel reads.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

namespace jp_emu {

struct KernelInfo {
    const char* name;
    void* function;
    void (*invoke)(void* function, void** args);
    int param_count;
    const char* const* param_kinds;  // "f32", "i64", "p:f32" (pointer to float), ...
};

template <typename T, typename = void>
struct Kind {
    static const char* name() { return "?"; }
};
#define JP_EMU_KIND(T, text) \
    template <>              \
    struct Kind<T> {         \
        static const char* name() { return text; } \
    };
JP_EMU_KIND(float, "f32")
JP_EMU_KIND(double, "f64")
JP_EMU_KIND(bool, "b8")
JP_EMU_KIND(char, "i8")
JP_EMU_KIND(signed char, "i8")
JP_EMU_KIND(unsigned char, "u8")
JP_EMU_KIND(short, "i16")
JP_EMU_KIND(unsigned short, "u16")
JP_EMU_KIND(int, "i32")
JP_EMU_KIND(unsigned int, "u32")
JP_EMU_KIND(long, "i64")
JP_EMU_KIND(unsigned long, "u64")
JP_EMU_KIND(long long, "i64")
JP_EMU_KIND(unsigned long long, "u64")
JP_EMU_KIND(void, "void")
#undef JP_EMU_KIND

template <typename T>
struct Kind<T*, void> {
    static const char* name() {
        static const std::string text = std::string("p:") + Kind<typename std::remove_cv<T>::type>::name();
        return text.c_str();
    }
};

template <typename... A, std::size_t... I>
void call_with(void (*fn)(A...), void** args, std::index_sequence<I...>) {
    fn(*static_cast<typename std::remove_cv<A>::type*>(args[I])...);
}

template <typename... A>
void invoke(void* fn, void** args) {
    call_with(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}

template <typename... A>
KernelInfo make_kernel(const char* name, void (*fn)(A...)) {
    static const char* kinds[sizeof...(A) + 1] = {Kind<typename std::remove_cv<A>::type>::name()..., nullptr};
    return KernelInfo{name, reinterpret_cast<void*>(fn), &invoke<A...>, (int)sizeof...(A), kinds};
}

}  // namespace jp_emu

#define JP_EMU_KERNEL(name) ::jp_emu::make_kernel(#name, &name)

// What a kernel module exports: its table, read once by the Python side.
#define JP_EMU_EXPORT_TABLE(...)                                                                    \
    static const ::jp_emu::KernelInfo jp_emu_kernels[] = {__VA_ARGS__};                              \
    extern "C" __attribute__((visibility("default"))) int jp_emu_kernel_count() {                    \
        return int(sizeof(jp_emu_kernels) / sizeof(jp_emu_kernels[0]));                             \
    }                                                                                                \
    extern "C" __attribute__((visibility("default"))) const ::jp_emu::KernelInfo* jp_emu_kernel(int i) { \
        return &jp_emu_kernels[i];                                                                   \
    }
