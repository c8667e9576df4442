//! The lawful purposes a filing job may declare (番号法 第9条: social security,
//! tax and disaster work only). Identifiers are stable kebab-case strings: they
//! are stored in jobs and audit entries, so never rename one.

use std::fmt;
use std::str::FromStr;

/// A filing that needs My Numbers, from `shared/domain.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// 給与所得の源泉徴収票 (tax office copy).
    WithholdingSlip,
    /// 給与支払報告書.
    SalaryPaymentReport,
    /// 退職所得の源泉徴収票 / 特別徴収票.
    RetirementIncomeSlip,
    /// 報酬・料金等の支払調書.
    PaymentRecord,
    /// 扶養控除等(異動)申告書.
    DependentDeductionDeclaration,
    /// 健康保険・厚生年金保険 被保険者資格取得届 / 喪失届.
    SocialInsuranceQualification,
    /// 健康保険 被扶養者(異動)届.
    SocialInsuranceDependentChange,
    /// 雇用保険 被保険者資格取得届 / 喪失届.
    EmploymentInsuranceQualification,
    /// 育児・介護休業給付等の申請.
    EmploymentInsuranceBenefit,
    /// テナント移管: the client company's own records handed back when it
    /// leaves (`AdminService.ExportTenant`, never `Detokenize`). The vault's
    /// operator holds the numbers as the client's contractor (委託先); giving
    /// them back to the client (委託元), or to the contractor it moves to, is
    /// the provision 番号法 第19条 allows for 委託 and 事業の承継 (the item's
    /// number moved with amendments: 第5号 before 2023, 第6号 since; check the
    /// text in force). A job of this purpose lists no tokens: it covers every
    /// record of its tenant created up to the job's creation, exported once.
    TenantExport,
}

impl Purpose {
    /// Every purpose, in the order `mnvault job purposes` lists them.
    pub const ALL: [Purpose; 10] = [
        Purpose::WithholdingSlip,
        Purpose::SalaryPaymentReport,
        Purpose::RetirementIncomeSlip,
        Purpose::PaymentRecord,
        Purpose::DependentDeductionDeclaration,
        Purpose::SocialInsuranceQualification,
        Purpose::SocialInsuranceDependentChange,
        Purpose::EmploymentInsuranceQualification,
        Purpose::EmploymentInsuranceBenefit,
        Purpose::TenantExport,
    ];

    /// Stable kebab-case identifier.
    pub fn id(self) -> &'static str {
        match self {
            Purpose::WithholdingSlip => "withholding-slip",
            Purpose::SalaryPaymentReport => "salary-payment-report",
            Purpose::RetirementIncomeSlip => "retirement-income-slip",
            Purpose::PaymentRecord => "payment-record",
            Purpose::DependentDeductionDeclaration => "dependent-deduction-declaration",
            Purpose::SocialInsuranceQualification => "social-insurance-qualification",
            Purpose::SocialInsuranceDependentChange => "social-insurance-dependent-change",
            Purpose::EmploymentInsuranceQualification => "employment-insurance-qualification",
            Purpose::EmploymentInsuranceBenefit => "employment-insurance-benefit",
            Purpose::TenantExport => "tenant-export",
        }
    }

    /// The filing's Japanese name.
    pub fn name_ja(self) -> &'static str {
        match self {
            Purpose::WithholdingSlip => "給与所得の源泉徴収票",
            Purpose::SalaryPaymentReport => "給与支払報告書",
            Purpose::RetirementIncomeSlip => "退職所得の源泉徴収票・特別徴収票",
            Purpose::PaymentRecord => "報酬・料金等の支払調書",
            Purpose::DependentDeductionDeclaration => "扶養控除等(異動)申告書",
            Purpose::SocialInsuranceQualification => "健康保険・厚生年金保険 被保険者資格取得届・喪失届",
            Purpose::SocialInsuranceDependentChange => "健康保険 被扶養者(異動)届",
            Purpose::EmploymentInsuranceQualification => "雇用保険 被保険者資格取得届・喪失届",
            Purpose::EmploymentInsuranceBenefit => "育児・介護休業給付等の申請",
            Purpose::TenantExport => "テナント移管(委託元への返還・移管先への引継ぎ)",
        }
    }

    /// Where the filing goes.
    pub fn submitted_to(self) -> &'static str {
        match self {
            Purpose::WithholdingSlip | Purpose::PaymentRecord => "税務署",
            Purpose::SalaryPaymentReport => "市区町村",
            Purpose::RetirementIncomeSlip => "税務署, 市区町村",
            Purpose::DependentDeductionDeclaration => "事業者保管",
            Purpose::SocialInsuranceQualification | Purpose::SocialInsuranceDependentChange => "日本年金機構, 健保組合",
            Purpose::EmploymentInsuranceQualification | Purpose::EmploymentInsuranceBenefit => "ハローワーク",
            Purpose::TenantExport => "委託元(移管先)",
        }
    }
}

/// The identifier is not a known purpose.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// It never holds the text: a caller may paste anything there.
#[error("the purpose is not a lawful purpose; `mnvault job purposes` lists them")]
pub struct UnknownPurpose;

impl FromStr for Purpose {
    type Err = UnknownPurpose;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Purpose::ALL.into_iter().find(|purpose| purpose.id() == id).ok_or(UnknownPurpose)
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_round_trip_and_are_kebab_case() {
        for purpose in Purpose::ALL {
            assert_eq!(purpose.id().parse::<Purpose>().unwrap(), purpose);
            assert!(purpose.id().bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{purpose}");
        }
        let mut ids: Vec<_> = Purpose::ALL.iter().map(|p| p.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), Purpose::ALL.len(), "identifiers are unique");
    }

    #[test]
    fn unknown_identifiers_are_refused() {
        assert_eq!("marketing".parse::<Purpose>().unwrap_err(), UnknownPurpose);
        assert!("Withholding-Slip".parse::<Purpose>().is_err());
    }
}
