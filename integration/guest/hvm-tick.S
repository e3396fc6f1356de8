/*
 * The tiny HVM guest: a multiboot kernel that prints GUEST-UP once and a numbered
 * GUEST-TICK about every second on COM1, and nothing else.
 *
 * Why not Linux: a Linux HVM guest under SeaBIOS, under Xen, under QEMU's TCG takes
 * 150 s to several minutes to reach init here, and once in a few runs it never did
 * (issue 15).  This one is up as soon as SeaBIOS hands over.  qemu-xen loads it
 * through its multiboot option ROM (xl's kernel= for an HVM guest is QEMU's -kernel).
 *
 * Time comes from the PIT at 20 Hz through the 8259 PIC, both emulated by Xen itself
 * and saved in the HVM context, and the CPU halts between interrupts: an idle guest
 * costs the emulated host almost nothing.  The tick number lives in guest memory, so
 * a restored guest counts on from where it was saved; the UART is qemu-xen's and
 * travels in the QEMU record, so a restore that lost that record prints nothing.
 *
 * Built on the host by integration/vm/run-vm.sh: as --32, ld -m elf_i386 -N -Ttext 0x100000.
 */
	.code32
	.text
	.globl	_start

	.set	MB_MAGIC, 0x1BADB002
	.set	MB_FLAGS, 0		/* the ELF headers give the load address */
	.set	COM1, 0x3F8
	.set	PIT_HZ_DIVISOR, 59659	/* 1193182 Hz / 59659 = 20 Hz */
	.set	IRQS_PER_TICK, 20
	.set	LAPIC_SVR, 0xFEE000F0
	.set	LAPIC_LVT0, 0xFEE00350

	.balign	4
multiboot_header:
	.long	MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

_start:
	cli
	/* The multiboot loader's GDT may be gone: interrupts need a CS of our own. */
	lgdt	gdt_descriptor
	ljmp	$0x08, $1f
1:	movw	$0x10, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %fs
	movw	%ax, %gs
	movw	%ax, %ss
	movl	$stack_top, %esp

	call	serial_init
	movl	$msg_up, %esi
	call	puts

	/* Every vector faults loudly, except the timer, the PIC's other lines and the
	 * local APIC's spurious vector. */
	xorl	%ecx, %ecx
2:	movl	$isr_fault, %eax
	cmpl	$0x20, %ecx
	jne	3f
	movl	$isr_timer, %eax
3:	cmpl	$0x21, %ecx
	jb	4f
	cmpl	$0x2F, %ecx
	ja	4f
	movl	$isr_other_irq, %eax
4:	cmpl	$0xFF, %ecx
	jne	9f
	movl	$isr_spurious, %eax
9:	movw	%ax, idt(,%ecx,8)
	movw	$0x08, idt+2(,%ecx,8)
	movw	$0x8E00, idt+4(,%ecx,8)	/* present, ring 0, 32-bit interrupt gate */
	shrl	$16, %eax
	movw	%ax, idt+6(,%ecx,8)
	incl	%ecx
	cmpl	$256, %ecx
	jb	2b
	lidt	idt_descriptor

	/* 8259s: IRQ0-7 -> vectors 0x20-0x27, IRQ8-15 -> 0x28-0x2F; only IRQ0 unmasked. */
	movb	$0x11, %al
	outb	%al, $0x20
	outb	%al, $0xA0
	movb	$0x20, %al
	outb	%al, $0x21
	movb	$0x28, %al
	outb	%al, $0xA1
	movb	$0x04, %al
	outb	%al, $0x21
	movb	$0x02, %al
	outb	%al, $0xA1
	movb	$0x01, %al
	outb	%al, $0x21
	outb	%al, $0xA1
	movb	$0xFE, %al
	outb	%al, $0x21
	movb	$0xFF, %al
	outb	%al, $0xA1

	/* Xen passes the 8259's INTR to a vCPU only through an enabled local APIC whose
	 * LINT0 takes ExtINT (vlapic_accept_pic_intr); reset leaves it software-disabled,
	 * and a disabled APIC masks every LVT write. */
	movl	$0x1FF, LAPIC_SVR	/* enabled; spurious vector 0xFF */
	movl	$0x700, LAPIC_LVT0	/* ExtINT, unmasked */

	/* PIT channel 0: rate generator (mode 2), low byte then high byte. */
	movb	$0x34, %al
	outb	%al, $0x43
	movb	$(PIT_HZ_DIVISOR & 0xFF), %al
	outb	%al, $0x40
	movb	$(PIT_HZ_DIVISOR >> 8), %al
	outb	%al, $0x40

	/* Tick whenever IRQS_PER_TICK interrupts have come since the last one.  After a
	 * restore Xen may deliver missed timer interrupts in a burst: the count still
	 * goes up by one per line printed, so ticks stay consecutive. */
idle:
	sti
	hlt
	movl	irq_count, %eax
	movl	%eax, %edx
	subl	last_tick_irq, %edx
	cmpl	$IRQS_PER_TICK, %edx
	jb	idle
	movl	%eax, last_tick_irq
	incl	tick_number
	movl	$msg_tick, %esi
	call	puts
	movl	tick_number, %eax
	call	put_decimal
	movb	$'\n', %al
	call	putc
	jmp	idle

isr_timer:
	pushl	%eax
	incl	irq_count
	movb	$0x20, %al		/* non-specific EOI */
	outb	%al, $0x20
	popl	%eax
	iret

isr_other_irq:				/* masked lines: only a spurious IRQ 7/15 gets here */
	pushl	%eax
	movb	$0x20, %al
	outb	%al, $0xA0
	outb	%al, $0x20
	popl	%eax
	iret

isr_spurious:				/* the local APIC's: no EOI */
	iret

isr_fault:
	cli
	movl	$msg_fault, %esi
	call	puts
5:	hlt
	jmp	5b

/* COM1 at 115200 8N1, FIFOs on, no UART interrupts. */
	.macro	UART_SET reg, value
	movw	$(COM1 + \reg), %dx
	movb	$\value, %al
	outb	%al, %dx
	.endm
serial_init:
	UART_SET 1, 0x00		/* IER: no interrupts */
	UART_SET 3, 0x80		/* LCR: DLAB, the divisor follows */
	UART_SET 0, 0x01		/* divisor 1: 115200 baud */
	UART_SET 1, 0x00
	UART_SET 3, 0x03		/* LCR: 8N1 */
	UART_SET 2, 0xC7		/* FCR: FIFOs on and cleared */
	ret

/* putc: %al; waits for the transmit holding register (LSR bit 5). */
putc:
	pushl	%edx
	pushl	%eax
	movw	$COM1+5, %dx
6:	inb	%dx, %al
	testb	$0x20, %al
	jz	6b
	popl	%eax
	movw	$COM1, %dx
	outb	%al, %dx
	popl	%edx
	ret

/* puts: the NUL-terminated string at %esi. */
puts:
	lodsb
	testb	%al, %al
	jz	7f
	call	putc
	jmp	puts
7:	ret

/* put_decimal: %eax, unsigned. */
put_decimal:
	movl	$10, %ecx
	movl	$digits_end, %edi
8:	xorl	%edx, %edx
	divl	%ecx
	addb	$'0', %dl
	decl	%edi
	movb	%dl, (%edi)
	testl	%eax, %eax
	jnz	8b
	movl	%edi, %esi
	jmp	puts

	.balign	8
gdt:
	.quad	0
	.quad	0x00CF9A000000FFFF	/* 0x08: flat 32-bit code */
	.quad	0x00CF92000000FFFF	/* 0x10: flat data */
gdt_end:
gdt_descriptor:
	.word	gdt_end - gdt - 1
	.long	gdt
idt_descriptor:
	.word	256 * 8 - 1
	.long	idt

msg_up:		.asciz	"GUEST-UP kernel=hvm-tick\n"
msg_tick:	.asciz	"GUEST-TICK "
msg_fault:	.asciz	"GUEST-FAULT unexpected exception or interrupt\n"

	.balign	4
irq_count:	.long	0
last_tick_irq:	.long	0
tick_number:	.long	0
digits:		.space	12
digits_end:	.byte	0

	.balign	8
idt:		.space	256 * 8
		.space	4096
stack_top:
