/*
 * Multiboot v1 and v2 entry: QEMU (v1) or GRUB (v2) jumps to _start32 in 32-bit protected mode,
 * paging off, eax = multiboot magic, ebx = physical address of the multiboot information.
 *
 * This file does only what Rust cannot: it builds identity page tables, switches the CPU to
 * 64-bit long mode and calls loader_main(magic, info) on a fresh stack.
 *
 * Identity map of the first 4 GiB (physical address == virtual address), as the Hermit kernel
 * expects (it edits its page tables through an identity mapping):
 *   0 .. 2 MiB     4 KiB pages (page 0 left unmapped to catch null pointers). Hermit later
 *                  remaps single 4 KiB pages here (e.g. its SMP trampoline at 0x8000), which needs
 *                  a page table, not a huge page.
 *   2 MiB .. 4 GiB 2 MiB pages. Not 1 GiB pages: kernel 0.11 identity-maps RAM in 2 MiB frames and
 *                  treats a 1 GiB parent entry as an error.
 */

    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003        /* bit 0: page-align modules, bit 1: memory map */
    .set PRESENT_WRITABLE, 0x3
    .set HUGE, 0x80
    .set KERNEL_STACK_SIZE, 0x8000   /* Hermit 0.11 KERNEL_STACK_SIZE */

    .set MB2_MAGIC, 0xE85250D6
    .set MB2_ARCH_I386, 0

    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    /* Multiboot2 header (GRUB's `multiboot2`): the same 32-bit entry, eax = 0x36d76289. Tags:
     * page-aligned modules, end. */
    .balign 8
mb2_header:
    .long MB2_MAGIC
    .long MB2_ARCH_I386
    .long mb2_header_end - mb2_header
    .long -(MB2_MAGIC + MB2_ARCH_I386 + (mb2_header_end - mb2_header))
    .balign 8
    .short 6, 0                      /* module alignment */
    .long 8
    .balign 8
    .short 0, 0                      /* end */
    .long 8
mb2_header_end:

    .section .text.boot32, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    movl %eax, mb_magic
    movl %ebx, mb_info

    /* Zero .bss: page tables and stacks live there. */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    /* Long mode available? (CPUID 0x80000001, EDX bit 29) Otherwise stop here. */
    movl $0x80000001, %eax
    cpuid
    btl $29, %edx
    jnc halt32

    /* PML4[0] -> PDPT */
    movl $pdpt, %eax
    orl $PRESENT_WRITABLE, %eax
    movl %eax, pml4

    /* PDPT[0..4] -> the four page directories */
    movl $pd, %eax
    orl $PRESENT_WRITABLE, %eax
    xorl %ecx, %ecx
1:  movl %eax, pdpt(,%ecx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jne 1b

    /* PD entries 1..2048: 2 MiB pages for 2 MiB .. 4 GiB */
    movl $1, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $(PRESENT_WRITABLE | HUGE), %eax
    movl %eax, pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 2b

    /* PD entry 0 -> page table with 4 KiB pages 1..512 */
    movl $pt0, %eax
    orl $PRESENT_WRITABLE, %eax
    movl %eax, pd
    movl $1, %ecx
3:  movl %ecx, %eax
    shll $12, %eax
    orl $PRESENT_WRITABLE, %eax
    movl %eax, pt0(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 3b

    /* CR4.PAE, CR3, EFER.LME, CR0.PG: long mode (compatibility) */
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr
    movl %cr0, %eax
    orl $(1 << 31), %eax
    movl %eax, %cr0

    /* 64-bit code segment: far jump into 64-bit mode */
    lgdt gdt_ptr
    ljmp $0x08, $start64

halt32:
    hlt
    jmp halt32

    .code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    leaq boot_stack_top(%rip), %rsp
    xorl %ebp, %ebp
    movl mb_magic(%rip), %edi
    movl mb_info(%rip), %esi
    call loader_main
4:  hlt
    jmp 4b

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff         /* 0x08: 64-bit code, ring 0 */
    .quad 0x00cf92000000ffff         /* 0x10: data, ring 0 */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt

    .section .data
    .balign 4
mb_magic:
    .long 0
mb_info:
    .long 0

    .section .bss
    .balign 4096
pml4:
    .skip 4096
pdpt:
    .skip 4096
pd:
    .skip 4 * 4096
pt0:
    .skip 4096
boot_stack:
    .skip 64 * 1024
boot_stack_top:
    /* The stack the kernel starts on: Hermit treats the entry rsp as the stack's lowest address. */
    .global kernel_stack
    .balign 4096
kernel_stack:
    .skip KERNEL_STACK_SIZE
